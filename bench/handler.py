"""The logging handler's cost (issue 25, item 6), standalone:

    .venv/bin/python bench/handler.py [--records N] [--workers W]

Starts the real server on a fresh SQLite file in a temporary directory and
measures:
- the caller's cost of `logger.info(...)` with InstanceLogHandler attached,
  one call at a time, with the server up and with no server at all
  (median and p99; targets: median < 50 us, p99 < 2 ms). While the server
  is up the queue is flushed between bursts, so that the calls measured are
  the ones that are queued, not dropped;
- end-to-end logs/s from 8 threads logging through the handler, until the
  last log is stored, against the batch endpoint's own rate: 8 threads
  POSTing batches of 1,000 prepared logs (target >= 0.8x); and against one
  connection POSTing them one after the other, which is what the handler's
  one sending thread does (one request in flight keeps each thread's logs
  in order), so that the ratio to it is the handler's own overhead.
Prints a small table (Markdown) and exits 0 when every target holds.
"""
import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from instance_api_client import Client, InstanceLogHandler  # noqa: E402

SITE = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01"
USER = "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
THREADS = 8


def start_server(directory, workers):
    output = Path(directory) / "server.log"
    log = open(output, "w")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("INSTANCES_")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--workers", str(workers),
         "--db", str(Path(directory) / "bench.db")],
        stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"Listening on (http://\S+)", output.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("the server did not start:\n" + output.read_text())


def caller_cost(client, instance_id, records, server_up):
    """Seconds per logger.info call, each timed alone."""
    logger = logging.getLogger(f"bench.caller.{'up' if server_up else 'down'}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = InstanceLogHandler(client, instance_id, capacity=10000)
    logger.addHandler(handler)
    timer = time.perf_counter
    times = []
    burst = 1000
    for start in range(0, records, burst):
        for n in range(start, min(start + burst, records)):
            before = timer()
            logger.info("step %d done", n, extra={"step": n})
            times.append(timer() - before)
        if server_up:
            handler.flush(timeout=60)
    logger.removeHandler(handler)
    handler.close(timeout=0 if not server_up else 60)
    return times, handler.dropped


def through_handler(client, instance_id, records):
    """logs/s from THREADS threads through one handler, until all are stored."""
    logger = logging.getLogger("bench.throughput")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = InstanceLogHandler(client, instance_id, capacity=records + 1)
    logger.addHandler(handler)
    each = records // THREADS
    go = threading.Barrier(THREADS + 1)

    def write(number):
        go.wait()
        for n in range(each):
            logger.info("thread %d step %d", number, n, extra={"writer": number})
    threads = [threading.Thread(target=write, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    assert handler.flush(timeout=300)
    elapsed = time.perf_counter() - started
    logger.removeHandler(handler)
    handler.close()
    assert handler.dropped == 0, handler.dropped
    return each * THREADS / elapsed


def through_batches(url, instance_id, records, connections=THREADS):
    """logs/s from `connections` threads POSTing prepared batches of 1,000."""
    each = records // connections
    go = threading.Barrier(connections + 1)
    batch = [{"log_type": "bench", "level": "info", "message": f"step {n}",
              "details": {"logger": "bench", "writer": 0}} for n in range(1000)]

    def write():
        with Client(url) as client:
            go.wait()
            for _ in range(each // len(batch)):
                client.append_logs(instance_id, batch)
    threads = [threading.Thread(target=write) for _ in range(connections)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return (each // len(batch)) * len(batch) * connections / (time.perf_counter() - started)


def micro(seconds):
    return f"{seconds * 1e6:.1f} us"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40000,
                        help="records for each measure (default 40000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the rate measures (default 3)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (default 1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        proc, url = start_server(directory, args.workers)
        try:
            with Client(url) as client:
                box = client.create_instance(site_id=SITE, user_id=USER, name="bench")["id"]
                up, _ = caller_cost(client, box, args.records, server_up=True)
                with Client(f"http://127.0.0.1:{free_port()}", max_attempts=2,
                            backoff=0.05) as dead:
                    down, dropped = caller_cost(dead, box, args.records, server_up=False)
                # Interleaved rounds, the median of each: a machine's load
                # moves, and it moves all three alike.
                rates = {"handler": [], "batch": [], "single": []}
                for _ in range(args.rounds):
                    rates["handler"].append(through_handler(client, box, args.records))
                    rates["batch"].append(through_batches(url, box, args.records))
                    rates["single"].append(through_batches(url, box, args.records,
                                                           connections=1))
                handler_rate, batch_rate, single_rate = (
                    statistics.median(rates[name]) for name in ("handler", "batch", "single"))
        finally:
            proc.terminate()
            proc.wait(30)
    rows = []
    ok = True
    for name, times in (("server up", up), ("server down", down)):
        median = statistics.median(times)
        p99 = statistics.quantiles(times, n=100)[98]
        good = median < 50e-6 and p99 < 2e-3
        ok &= good
        rows.append(f"| logger.info, {name} | median {micro(median)}, p99 {micro(p99)} | "
                    f"median < 50 us, p99 < 2 ms | {'yes' if good else 'NO'} |")
    ratio = handler_rate / batch_rate
    ok &= ratio >= 0.8
    rows.append(f"| 8 threads through the handler | {handler_rate:,.0f} logs/s | | |")
    rows.append(f"| batches of 1,000 POSTed on 8 connections | {batch_rate:,.0f} logs/s | | |")
    rows.append(f"| batches of 1,000 POSTed on 1 connection, one after the other (the "
                f"handler's shape) | {single_rate:,.0f} logs/s | | |")
    rows.append(f"| handler / batches on 8 connections | {ratio:.2f}x | >= 0.8x | "
                f"{'yes' if ratio >= 0.8 else 'NO'} |")
    rows.append(f"| handler / batches on 1 connection | {handler_rate / single_rate:.2f}x | | |")
    print(f"InstanceLogHandler, {args.records} records per measure, rates the median of "
          f"{args.rounds} interleaved rounds, server with --workers {args.workers} on SQLite "
          f"({dropped} records dropped while the server was down, as expected)\n")
    print("| measure | result | target | met |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
