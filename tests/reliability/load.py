"""Load for the reliability scenarios: threads on keep-alive connections to
the real server, each request timed."""
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from conftest import connect


@dataclass
class Load:
    statuses: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)
    replies: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # exceptions, not HTTP errors
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self):
        return sum(self.statuses.values())

    @property
    def non_2xx(self):
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    def p99_ms(self):
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)

    def figures(self):
        return {"requests": self.requests, "non_2xx": self.non_2xx,
                "p99_ms": self.p99_ms() if self.latencies else None}


def hammer(url, threads, request, *, each=None, seconds=None, start_together=True):
    """Run `request(conn, thread_index, n)` (returning a conftest.Reply) from
    `threads` threads, `each` times per thread or for `seconds`."""
    load, barrier = Load(), threading.Barrier(threads)

    def worker(index):
        conn = connect(url, timeout=30)
        if start_together:
            barrier.wait()
        deadline = time.monotonic() + seconds if seconds else None
        n = 0
        try:
            while (each is None or n < each) and (
                    deadline is None or time.monotonic() < deadline):
                started = time.perf_counter()
                reply = request(conn, index, n)
                took = time.perf_counter() - started
                with load.lock:
                    load.statuses[reply.status_code] += 1
                    load.latencies.append(took)
                    load.replies.append(reply)
                n += 1
        except Exception as exc:  # a dropped connection: the test reports it
            with load.lock:
                load.failures.append(repr(exc))
        finally:
            conn.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return load
