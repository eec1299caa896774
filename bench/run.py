"""The benchmark: the real server (the users' entry point, `python server.py`)
on seeded datasets, driven by wrk, beside two ceilings on the same waitress
settings (a bare WSGI callable and a bare Flask route), two references
(the bare Flask route plus one SQLite read, or plus one insert: ceilings.py)
and a peer (PocketBase, peer.py) seeded with the same rows.

    python bench/run.py [--sizes small,large] [--rounds 5] [--seconds 3] [--ops a,b]
                        [--engines sqlite,postgresql] [--postgres-url URL]
    python bench/run.py --scaling [--postgres-url postgresql://...]
    python bench/run.py --tail-only [--rounds 1] [--seconds 1]

The service runs twice on each dataset: with `--workers 1`, for every
operation at 8 and 32 connections against the ceilings and references
(the floors per process), and with its default (a worker per CPU), named
`default:...`, for GET by id, the lists, create and append at 32
connections, against one process (what the default buys on this machine;
the other operations and concurrency would add time, not information).
PocketBase, `pocketbase:...`, runs its equivalent of four of them at both.
`nometrics:get_one` is the one process again with INSTANCES_METRICS=0, for
what recording the metrics costs a GET by id; `noactivity:append_log` the
one process on a copy whose log trigger records no activity (lifecycle.py).
On PostgreSQL (postgres.py): `pg:` one worker, `pg-default:` the default,
`pg-two:` two servers of one worker on one database, driven together.
After each size's rounds, the append during a purge and the reaper's pass
(lifecycle.py); after the sizes, the logging handler (handler.py).

Writes bench/RESULTS.md (medians over rounds, the floors, where PocketBase
stands, then the live tail's section, live_tail.py), bench/results.png and
bench/results.json; with --scaling, bench/SCALING.md: GET-by-id and POST-log
with 1 and 2 worker processes on SQLite and on PostgreSQL; with --tail-only,
prints the live tail's section alone. Targets and concurrencies are interleaved within
each round, so a slow moment of the machine spreads over all of them.
"""
import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet  # noqa: E402
import handler  # noqa: E402
import lifecycle  # noqa: E402
import peer  # noqa: E402
import postgres  # noqa: E402
from app import DEFAULTS  # noqa: E402
import live_tail  # noqa: E402
from migrations import SCHEMA_VERSION  # noqa: E402
from report import BATCH, CONCURRENCY, DEFAULT_OPS, report  # noqa: E402
from workers import worker_count  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
SITE, USER = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01", "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
SEED = "timed"   # change with what seed.py writes, so that old seeds are made again


def start(argv, env=None):
    """A server process; returns it with the URL its first line announces."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        match = re.search(r"Listening on (http://\S+)", log.read())
        if match:
            return proc, match.group(1).rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log.seek(0)
    raise SystemExit(f"{argv} did not start:\n{log.read()}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def processes(proc):
    """`proc` and its children (a server's worker processes), by pid."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    return [proc.pid, *map(int, children)]


def peak_rss_mb(proc):
    """The peak RSS of `proc` and its workers, added up: pages the workers
    still share with the parent count once per process, so this is an
    upper bound of what they hold together."""
    total = 0
    for pid in processes(proc):
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    return total // 1024


def pss_mb(proc):
    """What `proc` and its workers hold now, shared pages divided among
    their sharers (proportional set size, added up)."""
    total = 0
    for pid in processes(proc):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1))
    return total // 1024


def lua(method, body):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "{method}"\n'
                 'wrk.headers["Content-Type"] = "application/json"\n'
                 f"wrk.body = {json.dumps(json.dumps(body))}\n")
    script.close()
    return script.name


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def wrk(url, connections, seconds, script=None):
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        argv += ["-s", script]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    if "Requests/sec" not in out or "50%" not in out:
        raise SystemExit(f"wrk gave no figures for {url}:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        # Anchored: the thread stats above also end in percentages.
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "socket_errors": errors.group(1) if errors else "",
    }


def wrk_pair(urls, connections, seconds, script=None):
    """Two servers driven at once (half the connections each), as one
    cell: requests/s and non-2xx summed, the worse p50 and p99."""
    results = [None, None]

    def drive(index):
        results[index] = wrk(urls[index], connections // 2, seconds, script)
    threads = [threading.Thread(target=drive, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if None in results:
        raise SystemExit(f"wrk failed on one of {urls}")
    return {"rps": sum(r["rps"] for r in results),
            "p50": max(r["p50"] for r in results), "p99": max(r["p99"] for r in results),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "socket_errors": "; ".join(r["socket_errors"] for r in results if r["socket_errors"])}


def settle(health):
    """Wait until the server has answered what the last cell left queued.
    wrk stops sending when its time is up, but up to `connections` requests
    are still in the server (32 batches of 1,000 logs are over a second of
    work), and the next cell would measure them. waitress serves requests in
    order of arrival, so a health check answers once they are done."""
    for url in [health] if isinstance(health, str) else health:
        with urllib.request.urlopen(url, timeout=60) as resp:
            resp.read()


def seeded(size):
    """A fresh working copy of the seeded dataset (seeding once per size)."""
    DATA.mkdir(exist_ok=True)
    # Named after what seed.py puts in it (SEED): a seed made before it had
    # labels and the names list_q finds would measure those on nothing.
    pristine = DATA / f"{size}.seed-{SEED}.db"
    if not pristine.exists():
        # Seeded under another name and renamed once complete: a seed cut
        # short would otherwise be taken for a whole one by the next run.
        partial = pristine.with_name(pristine.name + ".partial")
        subprocess.run([sys.executable, str(HERE / "seed.py"), size, str(partial)], check=True)
        partial.rename(pristine)
    work = DATA / f"{size}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(pristine, work)
    return work


def pick(work):
    """Ids the targets use, read from the dataset."""
    db = sqlite3.connect(work)
    hot, hot_logs = db.execute("SELECT instance_id, COUNT(*) FROM instance_log GROUP BY "
                               "instance_id ORDER BY 2 DESC LIMIT 1").fetchone()
    other = db.execute("SELECT id FROM instance WHERE id != ? ORDER BY created_at LIMIT 1 "
                       "OFFSET 10", (hot,)).fetchone()[0]
    site = db.execute("SELECT site_id FROM instance ORDER BY created_at LIMIT 1").fetchone()[0]
    cursors = db.execute("SELECT id FROM instance_log WHERE instance_id = ? "
                         "ORDER BY created_at, id", (hot,)).fetchall()
    db.close()
    canonical = [str(uuid_of(value)) for value in (hot, other, site)]
    # The first page, and the last full page: depth hot_logs (100,000 at the
    # large size).
    return (*canonical, str(uuid_of(cursors[0][0])), str(uuid_of(cursors[-51][0])), hot_logs)


def uuid_of(text):
    return uuid.UUID(str(text))


LOG = {"log_type": "agent_action", "message": "clicked the button", "details": {"x": 1}}


def targets(api, hot, other, site, first, deep, depth):
    """Operation: (URL, wrk script, rows per request, concurrencies)."""
    log = LOG
    return {
        "get_one": (f"{api}/api/instances/{other}", None, 1, CONCURRENCY),
        "list_filtered": (f"{api}/api/instances?site_id={site}&status=running&limit=50", None,
                          1, CONCURRENCY),
        "list_logs": (f"{api}/api/instances/{hot}/logs?limit=50", None, 1, CONCURRENCY),
        "create_instance": (f"{api}/api/instances",
                            lua("POST", {"site_id": SITE, "user_id": USER, "name": "bench"}), 1,
                            CONCURRENCY),
        "append_log": (f"{api}/api/instances/{other}/logs", lua("POST", log), 1, CONCURRENCY),
        "batch_ingest": (f"{api}/api/instances/{other}/logs", lua("POST", [log] * BATCH), BATCH,
                         CONCURRENCY),
        "tail_depth_0": (f"{api}/api/instances/{hot}/logs?after={first}&limit=50", None, 1,
                         CONCURRENCY),
        f"tail_depth_{depth}": (f"{api}/api/instances/{hot}/logs?after={deep}&limit=50",
                                None, 1, CONCURRENCY),
        # A fifth of the instances have env=prod at every size (seed.py).
        "list_by_label": (f"{api}/api/instances?label=env%3Dprod&limit=50", None, 1,
                          CONCURRENCY),
        # A dashboard's status counts, of everything and of one site.
        "counts_by_status": (f"{api}/api/instances/counts?by=status", None, 1, CONCURRENCY),
        "counts_by_status_site": (f"{api}/api/instances/counts?by=status&site_id={site}",
                                  None, 1, CONCURRENCY),
        # 50 names hold "gpu" at every size (seed.py).
        "list_q": (f"{api}/api/instances?q=gpu&limit=50", None, 1, CONCURRENCY),
    }


def peer_targets(url, other, site):
    """PocketBase's equivalents of COMPARED: a record by id, 50 records of a
    site and status newest first (with its total, as X-Total-Count), a new
    instance, a new log of an instance (its relation checked, as the
    service's foreign key)."""
    records = f"{url}/api/collections/{{}}/records"
    log = {"instance": other, "log_type": "agent_action", "message": "clicked the button",
           "details": {"x": 1}}
    where = urllib.parse.quote(f"(site_id='{site}' && status='running')")
    return {
        "pocketbase:get_one": (f"{records.format('instances')}/{other}", None, 1, CONCURRENCY),
        "pocketbase:list_filtered": (f"{records.format('instances')}?filter={where}"
                                     "&perPage=50&sort=-created", None, 1, CONCURRENCY),
        "pocketbase:create_instance": (records.format("instances"), lua(
            "POST", {"site_id": SITE, "user_id": USER, "name": "bench"}), 1, CONCURRENCY),
        "pocketbase:append_log": (records.format("logs"), lua("POST", log), 1, CONCURRENCY),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=DEFAULTS["THREADS"],
                        help="waitress threads, for the service and the ceilings alike")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgresql",
                        help="sqlite alone, or with PostgreSQL rows (pg:, pg-default:, pg-two:)")
    parser.add_argument("--scaling", action="store_true",
                        help="compare 1 and 2 workers on both engines instead")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database on the server that the bench's databases go beside")
    parser.add_argument("--handler-records", type=int, default=40000,
                        help="records per measure of the logging handler (handler.py)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md and the chart from results.json")
    parser.add_argument("--tail-only", action="store_true",
                        help="measure the live tail only and print its section")
    parser.add_argument("--ops", help="only these operations (comma list; PREFIX:OP names "
                                      "another server's; purge, reaper and handler the "
                                      "measures of their own), with the bare-Flask ceiling "
                                      "they are compared with; no live tail")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((HERE / "results.json").read_text())
        args.threads = saved.get("threads", args.threads)
        return report(saved["samples"], saved["peak_rss_mb"], args, saved.get("tail"),
                      saved.get("extra"))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does it)")
    if args.scaling:
        import scaling
        return scaling.measure(args, start, stop, wrk, lua(
            "POST", {"log_type": "agent_action", "message": "clicked the button"}), DATA)
    if args.tail_only:
        tail = live_tail.measure(start, stop, wrk, args.rounds, args.seconds)
        print("\n".join(live_tail.section(tail)))
        return None

    threads = str(args.threads)
    workers = worker_count(0)
    ceilings = {kind: start([sys.executable, str(HERE / "ceilings.py"), kind, "0", threads])
                for kind in ("wsgi", "flask")}
    samples, rss, extra = [], {}, {"lifecycle": {}}
    # --ops: another server only when an operation of its is named.
    named = set(args.ops.split(",")) if args.ops else None

    def wanted(*prefixes):
        return named is None or any(op.startswith(prefixes) for op in named)
    with_default, with_peer = wanted("default:"), wanted("pocketbase:")
    with_noactivity = wanted("noactivity:")
    with_pg = "postgresql" in args.engines.split(",") and wanted("pg")
    base_url = args.postgres_url.rsplit("/", 1)[0]
    try:
        for size in args.sizes.split(","):
            work = seeded(size)
            pristine = DATA / f"{size}.seed-{SEED}.db"
            ids = pick(work)
            one = [sys.executable, "server.py", "--port", "0", "--threads", threads]
            servers = {"one": start([*one, "--db", str(work), "--workers", "1"])}
            # The same one process without metrics (INSTANCES_METRICS=0):
            # what recording them costs get_one (issue 26: at most 5%).
            servers["nometrics"] = start([*one, "--db", str(work), "--workers", "1"],
                                         env={"INSTANCES_METRICS": "0"})
            if with_default:
                # The default, on the same file (two servers on one file write in
                # turn, storage.writes.FileLock); driven one at a time.
                servers["default"] = start([*one, "--db", str(work)])
            if with_noactivity:
                # Issue 23: the same server on a copy whose log trigger records
                # no activity (lifecycle.without_activity).
                servers["noactivity"] = start([*one, "--db", str(lifecycle.without_activity(
                    pristine)), "--workers", "1"])
            if with_pg:
                pg_url = postgres.seeded(size, base_url, f"seed-{SEED}", SCHEMA_VERSION)
                pg_ids = postgres.pick(pg_url)
                on_pg = [*one, "--database-url", pg_url]
                servers["pg"] = start([*on_pg, "--workers", "1"])
                servers["pg-default"] = start(on_pg)
                servers["pg-two"] = start([*on_pg, "--workers", "1"])
                servers["pg-two-b"] = start([*on_pg, "--workers", "1"])
                if workers != 2:
                    servers["pg-2w"] = start([*on_pg, "--workers", "2"])
            references = {kind: start([sys.executable, str(HERE / "ceilings.py"), kind, "0",
                                       threads, str(work)])
                          for kind in ("flask_query", "flask_insert", "smorest_query",
                                       "smorest_insert")}
            if with_pg:
                # What PostgreSQL costs the least read by itself (ceilings.py).
                references["pg_flask_query"] = start([
                    sys.executable, str(HERE / "ceilings.py"), "pg_flask_query", "0", threads,
                    pg_url])
            if with_peer:
                pb_data = peer.seeded(size, DATA / f"{size}.seed-{SEED}.db", DATA)
                pb_other, pb_site = peer.pick(pb_data)
                servers["pocketbase"] = peer.start(pb_data)
            # Issue 24: the fleet's feeds and webhooks, when the server has them.
            feeds = fleet.has_feeds(servers["one"][1])
            receiver = None
            if feeds and wanted("webhook:"):
                proc, hook_api, receiver = fleet.webhook_server(start, pristine, threads)
                servers["webhook"] = (proc, hook_api)
            sampler = Sampler({"default": servers["default"][0]} if with_default else {})
            try:
                api = servers["one"][1]
                plan = targets(api, *ids)
                health = {"": f"{api}/healthz"}
                if feeds:
                    plan.update({op: (*target, CONCURRENCY)
                                 for op, target in fleet.targets(api).items()})
                if receiver:
                    add_cells(plan, health, "webhook", servers["webhook"][1], ids,
                              ("create_instance",), fleet.CONCURRENCY)
                other = ids[1]
                plan["ceiling_wsgi"] = (ceilings["wsgi"][1] + "/", None, 1, CONCURRENCY)
                plan["ceiling_flask"] = (ceilings["flask"][1] + "/", None, 1, CONCURRENCY)
                plan["ceiling_flask_query"] = (f"{references['flask_query'][1]}/{other}", None,
                                               1, CONCURRENCY)
                plan["ceiling_flask_insert"] = (f"{references['flask_insert'][1]}/{other}",
                                                plan["append_log"][1], 1, CONCURRENCY)
                plan["ceiling_smorest_query"] = (f"{references['smorest_query'][1]}/{other}",
                                                 None, 1, CONCURRENCY)
                plan["ceiling_smorest_insert"] = (
                    f"{references['smorest_insert'][1]}/{other}", plan["append_log"][1], 1,
                    CONCURRENCY)
                # Other servers of the service: (prefix, its ids, ops, concurrencies).
                others = {"nometrics": (ids, ("get_one",), CONCURRENCY)}
                if with_noactivity:
                    others["noactivity"] = (ids, ("append_log",), CONCURRENCY)
                if with_default:
                    others["default"] = (ids, DEFAULT_OPS, (32,))
                if with_pg:
                    plan["pg:ceiling_flask_query"] = (
                        f"{references['pg_flask_query'][1]}/{pg_ids[1]}", None, 1, CONCURRENCY)
                    others["pg"] = (pg_ids, postgres.OPS, CONCURRENCY)
                    others["pg-default"] = (pg_ids, postgres.OPS, (32,))
                    if "pg-2w" in servers:
                        others["pg-2w"] = (pg_ids, postgres.TWO_OPS, (32,))
                for prefix, (their_ids, ops, concurrencies) in others.items():
                    add_cells(plan, health, prefix, servers[prefix][1], their_ids, ops,
                              concurrencies)
                if with_pg:
                    pair = [targets(servers[name][1], *pg_ids)
                            for name in ("pg-two", "pg-two-b")]
                    for op in postgres.TWO_OPS:
                        plan[f"pg-two:{op}"] = ((pair[0][op][0], pair[1][op][0]),
                                                *pair[0][op][1:3], (32,))
                    health["pg-two:"] = [f"{servers[name][1]}/healthz"
                                         for name in ("pg-two", "pg-two-b")]
                if with_peer:
                    plan.update(peer_targets(servers["pocketbase"][1], pb_other, pb_site))
                    health["pocketbase:"] = f"{servers['pocketbase'][1]}/api/health"
                if named:
                    plan = chosen(plan, args.ops)
                sampler.start()
                for round_no in range(args.rounds):
                    for op, (url, script, rows, concurrencies) in plan.items():
                        for connections in concurrencies:
                            if op.startswith("webhook:"):
                                result = fleet.webhook_cell(wrk, receiver, url, connections,
                                                            args.seconds, script)
                            else:
                                drive = wrk_pair if isinstance(url, tuple) else wrk
                                result = drive(url, connections, args.seconds, script)
                            settle(health[op[:op.index(":") + 1] if ":" in op else ""])
                            samples.append({"size": size, "op": op, "c": connections,
                                            "round": round_no, "rows": rows, **result})
                            print(f"{size:5} {op:26} c={connections:<2} round {round_no}: "
                                  f"{result['rps']:8.1f} req/s p99 {result['p99']:.1f} ms",
                                  flush=True)
                sampler.stop()
                rss[size] = {"one": peak_rss_mb(servers["one"][0])}
                if with_default:
                    rss[size].update(default=peak_rss_mb(servers["default"][0]),
                                     default_pss=sampler.peak["default"], workers=workers)
                if with_peer:
                    rss[size]["pocketbase"] = peak_rss_mb(servers["pocketbase"][0])
            finally:
                sampler.stop()
                for proc, _ in (*servers.values(), *references.values()):
                    stop(proc)
                if with_pg:
                    postgres.drop(base_url, size)
                if receiver:
                    receiver.shutdown()
            # Issue 23: the lifecycle's measures of their own (lifecycle.py).
            if named is None or "purge" in named:
                extra["lifecycle"].setdefault("purge", {})[size] = lifecycle.purge_cell(
                    start, stop, wrk, settle, pristine,
                    lambda api, other=ids[1]: f"{api}/api/instances/{other}/logs", plan_script(),
                    args.seconds)
            if named is None or "reaper" in named:
                extra["lifecycle"].setdefault("reaper", {})[size] = lifecycle.reaper_pass(
                    pristine)
    finally:
        for proc, _ in ceilings.values():
            stop(proc)
    if named is None or "handler" in named:
        # Issue 25: the logging handler, on a server of its own (handler.py).
        extra["handler"] = handler.measure(args.handler_records, min(args.rounds, 3))
    tail = None if args.ops else live_tail.measure(start, stop, wrk, args.rounds, args.seconds)
    report(samples, rss, args, tail, extra)


def add_cells(plan, health, prefix, api, ids, ops, concurrencies):
    """Cells of another server of the service at `api`, named PREFIX:OP."""
    theirs = targets(api, *ids)
    deep = next(op for op in theirs if op.startswith("tail_depth_") and op != "tail_depth_0")
    for op in ops:
        op = deep if op == "tail_depth_N" else op
        plan[f"{prefix}:{op}"] = (*theirs[op][:3], concurrencies)
    health[f"{prefix}:"] = f"{api}/healthz"


def plan_script():
    """append_log's wrk script."""
    return lua("POST", LOG)


def chosen(plan, ops):
    """The operations of `plan` named in `ops`, and the bare-Flask ceiling
    that the report compares each with (PREFIX:tail_depth_N: the deep tail
    page; purge, reaper and handler are measures of their own)."""
    wanted = set(ops.split(",")) - {"purge", "reaper", "handler"}

    def deep_of(op):
        prefix, _, name = op.rpartition(":")
        if name.startswith("tail_depth_") and name != "tail_depth_0":
            return f"{prefix}:tail_depth_N" if prefix else "tail_depth_N"
        return None
    unknown = wanted - set(plan) - {deep_of(op) for op in plan if deep_of(op)}
    if unknown:
        raise SystemExit(f"unknown operations: {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(plan)}, purge, reaper, handler (PREFIX:tail_depth_N: "
                         "the deep page)")
    return {op: target for op, target in plan.items() if op in wanted or op == "ceiling_flask"
            or deep_of(op) in wanted}


class Sampler(threading.Thread):
    """The peak of the summed PSS of each server's processes, read every
    half second while the cells run."""

    def __init__(self, procs):
        super().__init__(daemon=True)
        self.procs, self.peak = procs, {name: 0 for name in procs}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(0.5):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], pss_mb(proc))

    def stop(self):
        self.stopping.set()


if __name__ == "__main__":
    main()
