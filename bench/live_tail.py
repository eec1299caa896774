"""The live tail in the benchmark (CONTRACT 3.3), on a fresh SQLite file
with the service's default settings (8 threads, so at most 4 requests of a
process wait at once):

- wake latency: WAITERS requests wait (`wait=10`) after the last log of one
  instance, another connection posts a log, and each waiter's answer is
  timed from the POST's response; with 1 and 2 worker processes (with 2,
  the kernel spreads the connections, so some wakes cross processes);
- get_one with the most waiting requests a process holds (WAITERS, one
  worker) against none: what waiting costs everybody else;
- the fleet tail's wake (issue 24), where the server has the fleet feed:
  the same, the waiters on `GET /api/logs?after=...&wait=10` (every
  instance's logs) instead of one instance's.

run.py calls `measure` and writes `section` into RESULTS.md.
"""
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

WAITERS = 4
SITE, USER = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01", "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
TARGET = 0.9    # get_one with waiters held, as a share of get_one without


def measure(start, stop, wrk, rounds, seconds, wake_rounds=30):
    """{"wake": {workers: {...}}, "get_one": {...}}; `start`, `stop` and
    `wrk` are run.py's."""
    results = {"wake": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            proc, api = start([sys.executable, "server.py", "--port", "0", "--db",
                               str(Path(tmp) / f"tail{workers}.db"), "--workers", str(workers)])
            try:
                logs, cursor = new_instance(api)
                samples = wake_latencies(api, logs, cursor, wake_rounds)
                results["wake"][workers] = summed(samples)
                print(f"tail wake workers={workers}: p50 {results['wake'][workers]['p50']:.1f} "
                      f"ms p99 {results['wake'][workers]['p99']:.1f} ms", flush=True)
                if has_fleet_feed(api):
                    cursor = append(api, logs)
                    samples = wake_latencies(api, logs, cursor, wake_rounds, feed="/api/logs")
                    results.setdefault("fleet_wake", {})[workers] = summed(samples)
                    print(f"fleet tail wake workers={workers}: p99 "
                          f"{results['fleet_wake'][workers]['p99']:.1f} ms", flush=True)
                if workers == 1:
                    results["get_one"] = held_cost(api, logs, wrk, rounds, seconds)
            finally:
                stop(proc)
    return results


def summed(samples):
    return {"wakes": len(samples), "p50": percentile(samples, 0.5) * 1000,
            "p99": percentile(samples, 0.99) * 1000, "max": max(samples) * 1000}


def has_fleet_feed(api):
    """Whether the server serves the fleet's log feed (issue 24)."""
    return request(api, "GET", "/api/logs?limit=1")[0] == 200


def request(api, method, path, body=None, timeout=30):
    parts = urlsplit(api)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def new_instance(api):
    status, instance = request(api, "POST", "/api/instances",
                               {"site_id": SITE, "user_id": USER, "name": "tail"})
    logs = f"/api/instances/{instance['id']}/logs"
    return logs, append(api, logs)


def append(api, logs):
    status, log = request(api, "POST", logs, {"log_type": "agent_action", "message": "step"})
    if status != 201:
        raise SystemExit(f"POST {logs} answered {status}: {log}")
    return log["id"]


def wake_latencies(api, logs, cursor, rounds, feed=None):
    """Seconds from each POST's response to each waiter's answer; the
    waiters on `feed` (a fleet feed's path) when given, else on `logs`."""
    samples = []
    for _ in range(rounds):
        answers = [None] * WAITERS

        def wait(index, after=cursor, answers=answers):
            status, page = request(api, "GET", f"{feed or logs}?after={after}&wait=10")
            answers[index] = (time.monotonic(), status, page)

        threads = [threading.Thread(target=wait, args=(n,)) for n in range(WAITERS)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)     # all of them asleep in the server
        cursor = append(api, logs)
        posted = time.monotonic()
        for thread in threads:
            thread.join(15)
        for answered, status, page in answers:
            if status != 200 or [log["id"] for log in page] != [cursor]:
                raise SystemExit(f"a waiter was answered {status} {page}, not the new log")
            samples.append(answered - posted)
    return samples


def held_cost(api, logs, wrk, rounds, seconds):
    """get_one req/s at 8 connections, without waiters and with WAITERS held
    on a quiet instance, in rounds that alternate which goes first; medians
    and their ratio."""
    quiet, _ = new_instance(api)
    get_one = f"{api}{logs.removesuffix('/logs')}"
    runs = {"none": [], "held": []}
    wrk(get_one, 8, 1)     # warm up: the first cell would be the slower one
    for round_no in range(rounds):
        for kind in ("none", "held") if round_no % 2 == 0 else ("held", "none"):
            if kind == "none":
                runs["none"].append(wrk(get_one, 8, seconds)["rps"])
            else:
                with Held(api, quiet):
                    runs["held"].append(wrk(get_one, 8, seconds)["rps"])
    none, held = (statistics.median(runs[key]) for key in ("none", "held"))
    print(f"tail get_one c=8: {none:.0f} req/s, {held:.0f} with {WAITERS} waiters held",
          flush=True)
    return {"none": none, "held": held, "ratio": held / none}


class Held:
    """WAITERS requests kept waiting on the instance `logs` (asked again as
    soon as one is answered), for the length of a `with` block."""

    def __init__(self, api, logs):
        self.api, self.logs = api, logs
        self.done = threading.Event()

    def __enter__(self):
        status, page = request(self.api, "GET", f"{self.logs}?limit=1")
        self.cursor = page[0]["id"]
        self.threads = [threading.Thread(target=self.keep) for _ in range(WAITERS)]
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)
        return self

    def keep(self):
        while not self.done.is_set():
            started = time.monotonic()
            request(self.api, "GET", f"{self.logs}?after={self.cursor}&wait=30", timeout=40)
            if time.monotonic() - started < 1 and not self.done.is_set():
                time.sleep(0.2)     # answered at once (past the bound): no busy loop

    def __exit__(self, *exc):
        self.done.set()
        self.cursor = append(self.api, self.logs)    # answers every waiter
        for thread in self.threads:
            thread.join(40)


def percentile(samples, share):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def section(results):
    """The RESULTS.md lines of the live tail."""
    if not results:
        return []
    lines = ["## Live tail", "",
             f"A fresh SQLite file, default settings (8 threads: at most {WAITERS} waiting "
             f"requests per process). Wake latency: {WAITERS} requests wait on one instance, "
             "another connection posts a log, and each waiter's answer is timed from the "
             "POST's response (a waiter in the writing process is woken at the commit, "
             "before that response is sent, so near 0; with 2 workers some wakes cross "
             "processes, where the watcher polls every 50 ms). get_one: wrk at 8 connections "
             f"with {WAITERS} requests held waiting, against none, one worker.", "",
             "| workers | wakes | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for workers, cell in sorted(results["wake"].items()):
        lines.append(f"| {workers} | {cell['wakes']} | {cell['p50']:.1f} | {cell['p99']:.1f} "
                     f"| {cell['max']:.1f} |")
    fleet = results.get("fleet_wake")
    if fleet:
        lines += ["", "The fleet tail (issue 24): the same waiters on `GET /api/logs?after=..."
                  "&wait=10`, every instance's logs.", "",
                  "| workers | wakes | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for workers, cell in sorted(fleet.items()):
            lines.append(f"| {workers} | {cell['wakes']} | {cell['p50']:.1f} | "
                         f"{cell['p99']:.1f} | {cell['max']:.1f} |")
    get_one = results["get_one"]
    met = "yes" if get_one["ratio"] >= TARGET else "**no**"
    worst = max(cell["p99"] for cell in results["wake"].values())
    lines += ["", "| target | measured | met |", "|---|---|---|",
              f"| get_one with {WAITERS} waiters held >= {TARGET} x without "
              f"({get_one['held']:.0f} / {get_one['none']:.0f} req/s) | {get_one['ratio']:.2f} "
              f"| {met} |",
              f"| wake p99 < 250 ms | {worst:.1f} ms | {'yes' if worst < 250 else '**no**'} |"]
    if fleet:
        worst = max(cell["p99"] for cell in fleet.values())
        lines.append(f"| fleet tail wake p99 <= 250 ms | {worst:.1f} ms | "
                     f"{'yes' if worst <= 250 else '**no**'} |")
    lines.append("")
    return lines
