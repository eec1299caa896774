"""`python bench/run.py --scaling`: GET by id and POST log at 32
connections with 1 and 2 worker processes on SQLite and PostgreSQL, written
to bench/SCALING.md. The older, smaller comparison: since issue 26 `make
bench` has PostgreSQL rows of its own (postgres.py). run.py passes its
`start`, `stop`, `wrk`, the append's wrk script and the data directory."""
import json
import os
import statistics
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITE, USER = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01", "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"


def measure(args, start, stop, wrk, post_log, data):
    """GET-by-id and POST-log at concurrency 32 with 1 and 2 worker processes,
    on a fresh SQLite file and a fresh PostgreSQL database, rounds interleaved."""
    import psycopg

    data.mkdir(exist_ok=True)
    base = args.postgres_url.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS instances_bench")
        conn.execute("CREATE DATABASE instances_bench")
    sqlite_file = data / "scaling.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)
    engines = {"sqlite": ["--db", str(sqlite_file)],
               "postgresql": ["--database-url", f"{base}/instances_bench"]}
    samples = []
    for round_no in range(args.rounds):
        for engine, where in engines.items():
            for workers in (1, 2):
                proc, api = start([sys.executable, "server.py", "--port", "0",
                                   "--workers", str(workers), *where])
                try:
                    instance = create_one(api)
                    for op, url, script in (
                            ("get_one", f"{api}/api/instances/{instance}", None),
                            ("append_log", f"{api}/api/instances/{instance}/logs", post_log)):
                        result = wrk(url, 32, args.seconds, script)
                        samples.append({"engine": engine, "workers": workers, "op": op,
                                        "round": round_no, **result})
                        print(f"{engine:10} workers={workers} {op:10} round {round_no}: "
                              f"{result['rps']:8.1f} req/s", flush=True)
                finally:
                    stop(proc)
    lines = ["# Workers and engines", "",
             f"`python bench/run.py --scaling` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC, {os.cpu_count()} CPUs, wrk -t2 -c32 on the same host, {args.rounds} rounds "
             f"of {args.seconds} s, medians. PostgreSQL {args.postgres_url.split('@')[-1]} "
             "on the same host.", "",
             "| operation | engine | 1 worker req/s | 2 workers req/s | non-2xx |",
             "|---|---|---|---|---|"]
    for op in ("get_one", "append_log"):
        for engine in engines:
            cells = [statistics.median(x["rps"] for x in samples if x["op"] == op
                                       and x["engine"] == engine and x["workers"] == w)
                     for w in (1, 2)]
            errors = sum(x["non_2xx"] for x in samples if x["op"] == op and x["engine"] == engine)
            lines.append(f"| {op} | {engine} | {cells[0]:.0f} | {cells[1]:.0f} | {errors} |")
    (HERE / "SCALING.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def create_one(api):
    request = urllib.request.Request(
        f"{api}/api/instances", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"site_id": SITE, "user_id": USER, "name": "bench"}).encode())
    with urllib.request.urlopen(request) as resp:
        return json.load(resp)["id"]
