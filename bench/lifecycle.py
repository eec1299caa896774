"""The lifecycle's costs in the benchmark (issue 23, item 5), on SQLite:

- append_log with activity recording against the same build without it:
  `without_activity(work)` makes a copy of a size's working file whose log
  trigger (log_triggers.LOG_TRIGGERS) is the same statement with the activity
  part (log_triggers.SQLITE_ACTIVITY: last_activity_at and idle_deadline) taken
  out; run.py serves it with the same server as `noactivity:append_log`,
  in the same rounds. The server keeps a trigger it finds at its schema
  version (CREATE TRIGGER IF NOT EXISTS, and no migration at the current
  version), so the code is the same and only the trigger differs: the
  product has no switch for it, and none is added for the bench;
- append p99 during a purge (`purge_cell`): one worker on a fresh copy of
  the size's seed, append_log at 8 connections in PURGE_CELLS cells of
  `seconds` without a purge, then as many while `instance-api purge`
  (INSTANCES_LOG_RETENTION=3d: the seed's logs span 30 days, so about nine
  in ten are due, 890,000 at the large size) deletes them from another
  process. The purge of the large size takes minutes (327 s in a trial,
  under those appends), so it is stopped after the cells (SIGTERM: it
  commits a batch at a time, and ends after the one in flight); at
  the small size it ends within the first cell, and the cells end with it.
  The p99 of each side is the median of its cells' p99s (wrk's percentiles
  cannot be merged);
- the reaper's pass (`reaper_pass`): a copy of the seed with 1,000 active
  instances (all of them, when fewer) made idle-due, and one call of
  jobs.reaper.Reaper.run_once timed in a process of its own:

    python bench/lifecycle.py reaper PATH   (prints JSON)
"""
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DUE = 1000
RETENTION = "3d"
PURGE_CELLS = 5
PURGE_P99 = 2.0     # append p99 during the purge, at most this many times without


def copy_db(source, target):
    target = Path(target).resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


def without_activity(work):
    """A copy of `work` whose log trigger records no activity."""
    from log_triggers import LOG_TRIGGERS, SQLITE_ACTIVITY
    statement = LOG_TRIGGERS["sqlite"][0]
    part = f",\n                {SQLITE_ACTIVITY}"
    if part not in statement:
        raise SystemExit("log_triggers.LOG_TRIGGERS changed: bench/lifecycle.py cannot take the "
                         "activity part out of the log trigger any more")
    target = copy_db(work, work.with_name(work.stem + "-noactivity.db"))
    # Brought to this server's schema version first: a migration may make
    # the trigger again, and the server would then not touch the file's.
    subprocess.run([sys.executable, __file__, "migrate", str(target)], cwd=ROOT, check=True)
    db = sqlite3.connect(target)
    with db:
        db.execute("DROP TRIGGER instance_log_counted")
        db.execute(statement.replace(part, ""))
    made, = db.execute("SELECT sql FROM sqlite_master WHERE name = 'instance_log_counted'"
                       ).fetchone()
    db.close()
    if "last_activity_at" in made:
        raise SystemExit("the log trigger of the copy still records activity")
    return target


def migrate(path):
    import migrations
    from storage import db
    from storage.engines import open_database

    db.initialize(open_database(str(path)))
    migrations.create_tables()
    db.close_all()


def purge_cell(start, stop, wrk, settle, pristine, url_of, script, seconds):
    """{"without": p99 ms, "during": p99 ms, "cells": n, "purge_s": s,
    "deleted": text, "non_2xx": n}; `url_of(api)` is the append URL."""
    work = copy_db(pristine, pristine.with_name("purge.db"))
    proc, api = start([sys.executable, "server.py", "--port", "0", "--db", str(work),
                       "--workers", "1"])
    try:
        url = url_of(api)
        wrk(url, 8, 1, script)     # warm up
        settle(f"{api}/healthz")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("INSTANCES_")},
               "INSTANCES_DATABASE": str(work), "INSTANCES_LOG_RETENTION": RETENTION}
        without = []
        for _ in range(PURGE_CELLS):
            without.append(wrk(url, 8, seconds, script))
            settle(f"{api}/healthz")
        started = time.monotonic()
        command = Path(sys.executable).with_name("instance-api")
        purge = subprocess.Popen([str(command), "purge"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        during = []
        while len(during) < PURGE_CELLS:
            during.append(wrk(url, 8, seconds, script))
            settle(f"{api}/healthz")
            if purge.poll() is not None:
                break
        finished = purge.poll() is not None
        if not finished:
            purge.terminate()
        out = purge.communicate(timeout=60)[0]
        took = time.monotonic() - started
        if finished and purge.returncode != 0:
            raise SystemExit(f"instance-api purge failed:\n{out}")
    finally:
        stop(proc)
    return {"without": statistics.median(cell["p99"] for cell in without),
            "during": statistics.median(cell["p99"] for cell in during),
            "rps_without": statistics.median(cell["rps"] for cell in without),
            "rps_during": statistics.median(cell["rps"] for cell in during),
            "cells": len(during), "purge_s": took, "finished": finished,
            "deleted": " ".join(out.split()) if finished else "stopped after the cells",
            "non_2xx": sum(cell["non_2xx"] for cell in (*during, *without))}


def reaper_pass(pristine):
    """{"instances": n, "due": n, "ended": n, "seconds": s} of one pass."""
    work = copy_db(pristine, pristine.with_name("reaper.db"))
    out = subprocess.run([sys.executable, __file__, "reaper", str(work)], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the reaper's pass failed:\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_reaper(path):
    from datetime import timedelta

    import models
    from jobs.reaper import Reaper
    from storage import db
    from storage.engines import open_database
    from storage.fields import utcnow

    db.initialize(open_database(str(path)))
    now = utcnow()
    with db.connection_context():
        total = models.Instance.select().count()
        chosen = [key for key, in models.Instance.select(models.Instance.id).where(
            models.Instance.status.in_(models.ACTIVE_STATUSES)).order_by(
            models.Instance.id).limit(DUE).tuples()]
        quiet = now - timedelta(hours=1)
        with db.atomic():
            for start in range(0, len(chosen), 100):
                models.Instance.update(
                    idle_timeout_s=60, last_activity_at=quiet,
                    idle_deadline=quiet + timedelta(seconds=60)).where(
                    models.Instance.id.in_(chosen[start:start + 100])).execute()
    started = time.perf_counter()
    ended = Reaper().run_once(now)
    took = time.perf_counter() - started
    db.close_all()
    print(json.dumps({"instances": total, "due": len(chosen), "ended": ended,
                      "seconds": took}))


def section(results):
    """(floor rows for the Floors table, the lines of its own section)."""
    rows, lines = [], ["## The lifecycle's costs (issue 23)", ""]
    for size, purge in sorted(results.get("purge", {}).items()):
        ratio = purge["during"] / purge["without"]
        rows.append(f"| append_log p99 during a purge <= {PURGE_P99} x without, {size} | "
                    f"{purge['cells']} | {ratio:.2f} ({purge['during']:.1f} / "
                    f"{purge['without']:.1f} ms) | "
                    f"{'yes' if ratio <= PURGE_P99 else '**no**'} |")
        lines.append(f"- Purge, {size}: append_log at 8 connections, one worker, "
                     f"{PURGE_CELLS} cells without a purge, then {purge['cells']} while "
                     f"`instance-api purge` (INSTANCES_LOG_RETENTION={RETENTION}) ran "
                     f"{purge['purge_s']:.1f} s ({purge['deleted']}); medians of the cells: "
                     f"p99 {purge['without']:.1f} ms without, {purge['during']:.1f} during; "
                     f"{purge['rps_without']:.0f} and {purge['rps_during']:.0f} req/s; "
                     f"{purge['non_2xx']} non-2xx.")
    for size, reaper in sorted(results.get("reaper", {}).items()):
        ok = reaper["ended"] == reaper["due"]
        rows.append(f"| reaper: one pass ends every due instance, {size} "
                    f"({reaper['instances']:,} instances, {reaper['due']:,} due) | 1 | "
                    f"{reaper['seconds'] * 1000:.0f} ms, {reaper['ended']:,} ended | "
                    f"{'yes' if ok else '**no**'} |")
        lines.append(f"- Reaper, {size}: one `Reaper.run_once` over {reaper['instances']:,} "
                     f"instances with {reaper['due']:,} idle-due ended {reaper['ended']:,} in "
                     f"{reaper['seconds'] * 1000:.0f} ms (in-process, its own process; the "
                     "issue sets no bound, the time is stated).")
    lines += ["- Activity recording: `noactivity:append_log` is the same server on a copy of "
              "the dataset whose log trigger leaves last_activity_at and idle_deadline alone "
              "(bench/lifecycle.py); its floor is in the table above.", ""]
    return rows, lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["reaper"]:
        time_reaper(sys.argv[2])
    elif sys.argv[1:2] == ["migrate"]:
        migrate(sys.argv[2])
    else:
        raise SystemExit(__doc__)
