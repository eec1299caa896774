"""Append latency during a purge, this tree's jobs/purge.py against another
revision's (A/B in one run), on a seeded SQLite file:

    python bench/seed.py small bench/data/x.db     (or any seed; see below)
    python bench/purge_ab.py SEED.db [--baseline main] [--rounds 3] [--cells 3]
                             [--seconds 3] [--retention 3d]

Each round serves a fresh copy of SEED with one worker and drives
append_log at 8 connections (wrk, as lifecycle.purge_cell): `--cells` cells
without a purge, then as many while `instance-api purge`
(INSTANCES_LOG_RETENTION=`--retention`) runs from another process, with
the baseline's jobs/purge.py (`git show BASELINE:jobs/purge.py`) or this
tree's; the two alternate which goes first from round to round. A purge
still running after its cells is stopped (SIGTERM) and what it deleted is
counted from the file. Prints a line per run, then the medians over rounds
of each side's p99 (each run's p99 is the median of its cells') and of
its purge rate. A purge's total time is `--full`: the purge alone, to the
end, once per side, on a copy with no load.

A smaller seed than the large one does: seed.py's SIZES take another
entry, e.g. (10_000, 500_000), with seed.main(["mid", PATH]).
"""
import argparse
import importlib.util
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def run_purge(module_path, constants=""):
    """In a process of its own: `instance-api purge` with the purge module
    at `module_path` (the settings from the environment), its constants
    set as `constants` says (NAME=VALUE,...)."""
    spec = importlib.util.spec_from_file_location("purge_under_test", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for pair in filter(None, constants.split(",")):
        name, value = pair.split("=")
        setattr(module, name, type(getattr(module, name))(value))
    raise SystemExit(module.purge_command([]))


def due(path, retention):
    """Logs older than `retention` in the file at `path`."""
    from storage.fields import utcnow
    from storage.ids import floor_id
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM instance_log WHERE id < ?", (
            str(floor_id(utcnow() - retention)),)).fetchone()[0]
    finally:
        conn.close()


def one(seed, module, retention_text, retention, cells, seconds, load=True):
    from lifecycle import copy_db
    from run import LOG, lua, settle, start, stop, wrk
    work = copy_db(seed, Path(tempfile.gettempdir()) / "purge-ab.db")
    proc, api = start([sys.executable, "server.py", "--port", "0", "--db", str(work),
                       "--workers", "1"])
    try:
        script = lua("POST", LOG)
        ids = sqlite3.connect(work).execute(
            "SELECT id FROM instance ORDER BY id LIMIT 2").fetchall()
        url = f"{api}/api/instances/{ids[1][0]}/logs"
        before = due(work, retention)
        without, during = [], []
        if load:
            wrk(url, 8, 1, script)
            settle(f"{api}/healthz")
            for _ in range(cells):
                without.append(wrk(url, 8, seconds, script))
                settle(f"{api}/healthz")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("INSTANCES_")},
               "INSTANCES_DATABASE": str(work), "INSTANCES_LOG_RETENTION": retention_text}
        started = time.monotonic()
        module, constants = module if isinstance(module, tuple) else (module, "")
        purge = subprocess.Popen([sys.executable, __file__, "run-purge", str(module), constants],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        if load:
            while len(during) < cells and purge.poll() is None:
                during.append(wrk(url, 8, seconds, script))
                settle(f"{api}/healthz")
            if purge.poll() is None:
                purge.terminate()
        out = purge.communicate()[0]
        took = time.monotonic() - started
    finally:
        stop(proc)
    left = due(work, retention)
    return {"without": statistics.median(c["p99"] for c in without) if without else None,
            "during": statistics.median(c["p99"] for c in during) if during else None,
            "rps_without": statistics.median(c["rps"] for c in without) if without else None,
            "rps_during": statistics.median(c["rps"] for c in during) if during else None,
            "non_2xx": sum(c["non_2xx"] for c in (*without, *during)),
            "deleted": before - left, "left": left, "seconds": took,
            "out": " ".join(out.split())[-200:]}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed")
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--retention", default="3d")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SETTINGS",
                        help="one more side: this tree's purge with constants of its "
                             "module changed, e.g. pause5=PAUSE=0.005,TARGET=0.008")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="also time each side's purge to its end, without load")
    args = parser.parse_args(argv)
    from settings import duration
    retention = duration(args.retention)
    baseline = Path(tempfile.gettempdir()) / "purge_baseline.py"
    baseline.write_text(subprocess.run(
        ["git", "show", f"{args.baseline}:jobs/purge.py"], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout)
    sides = {args.baseline: baseline, "this tree": ROOT / "jobs" / "purge.py"}
    if args.no_baseline:
        del sides[args.baseline]
    for variant in args.variant:
        name, constants = variant.split("=", 1)
        sides[name] = (ROOT / "jobs" / "purge.py", constants)
    results = {name: [] for name in sides}
    for n in range(args.rounds):
        # Each round starts one side further on: every side goes first once
        # in as many rounds as there are sides.
        names = list(sides)
        order = names[n % len(names):] + names[:n % len(names)]
        for name in order:
            got = one(args.seed, sides[name], args.retention, retention, args.cells,
                      args.seconds)
            results[name].append(got)
            print(f"round {n + 1} {name}: p99 {got['without']:.1f} ms without, "
                  f"{got['during']:.1f} during; {got['rps_without']:.0f} / "
                  f"{got['rps_during']:.0f} req/s; deleted {got['deleted']} in "
                  f"{got['seconds']:.1f} s ({got['deleted'] / got['seconds']:.0f}/s), "
                  f"{got['left']} left; non-2xx {got['non_2xx']}", flush=True)
    for name, runs in results.items():
        if not runs:
            continue
        without = statistics.median(r["without"] for r in runs)
        during = statistics.median(r["during"] for r in runs)
        rate = statistics.median(r["deleted"] / r["seconds"] for r in runs)
        print(f"{name}: p99 {without:.1f} ms without, {during:.1f} during "
              f"({during / without:.2f}x); {rate:.0f} logs/s purged under load "
              f"(medians of {len(runs)})")
    if args.full:
        for name, module in sides.items():
            got = one(args.seed, module, args.retention, retention, 0, 0, load=False)
            print(f"{name}: full purge alone: {got['deleted']} logs in "
                  f"{got['seconds']:.1f} s, {got['left']} left ({got['out']})", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run-purge"]:
        run_purge(*sys.argv[2:4])
    else:
        main(sys.argv[1:])
