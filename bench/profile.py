"""Where a request's time goes, in-process: the service's WSGI app called
directly (no sockets, no load generator), so the figures are the app's own
cost per request. Run it on a seeded dataset (bench/seed.py):

    python bench/profile.py bench/data/small.seed-timed.db            # µs per request
    python bench/profile.py bench/data/small.seed-timed.db get_one    # and its profile
    python bench/profile.py bench/data/small.seed-timed.db --instructions append_log ...

The database is copied first; the writes go to the copy. --instructions
counts the CPU instructions of a request under valgrind's callgrind (the
same from run to run, however busy the machine): the process runs
uninstrumented up to the measured calls, which callgrind_control switches
instrumentation on for, and the figure is the instructions of CALLS calls
(default 200, after as many warm-up calls) divided by CALLS.
"""
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from werkzeug.test import EnvironBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import metrics  # noqa: E402
from app import create_app  # noqa: E402
from loglines import configure_logging  # noqa: E402
from bench.ceilings import (  # noqa: E402
    bare_flask, flask_insert, flask_query, smorest_insert, smorest_query,
)

SITE, USER = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01", "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
LOG = {"log_type": "agent_action", "message": "clicked the button", "details": {"x": 1}}


def operations(path):
    db = sqlite3.connect(path)
    hot = db.execute("SELECT id FROM instance ORDER BY log_count DESC LIMIT 1").fetchone()[0]
    other, site = db.execute("SELECT id, site_id FROM instance WHERE id != ? "
                             "ORDER BY created_at LIMIT 1 OFFSET 10", (hot,)).fetchone()
    first = db.execute("SELECT id FROM instance_log WHERE instance_id = ? "
                       "ORDER BY created_at, id LIMIT 1", (hot,)).fetchone()[0]
    db.close()
    hot, other, site, first = (str(uuid.UUID(value)) for value in (hot, other, site, first))
    return {
        "get_one": ("GET", f"/api/instances/{other}", None),
        "list_filtered": ("GET", f"/api/instances?site_id={site}&status=running&limit=50", None),
        "list_logs": ("GET", f"/api/instances/{hot}/logs?limit=50", None),
        "tail": ("GET", f"/api/instances/{hot}/logs?after={first}&limit=50", None),
        "create_instance": ("POST", "/api/instances",
                            {"site_id": SITE, "user_id": USER, "name": "bench"}),
        "append_log": ("POST", f"/api/instances/{other}/logs", LOG),
        "batch_ingest": ("POST", f"/api/instances/{other}/logs", [LOG] * 1000),
        "list_by_label": ("GET", "/api/instances?label=env%3Dprod&limit=50", None),
        "counts_by_status": ("GET", "/api/instances/counts?by=status", None),
        "counts_by_status_site": ("GET", f"/api/instances/counts?by=status&site_id={site}",
                                  None),
        "list_q": ("GET", "/api/instances?q=gpu&limit=50", None),
    }


def call(app, environ):
    statuses = []
    body = b"".join(app(dict(environ, **{"wsgi.input": io.BytesIO(environ["body"])}),
                        lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0][0] == "2", (statuses, body[:300])


def count_instructions(source, wanted, calls=200, script=__file__):
    """Instructions per request of each operation in `wanted`, each in a
    process of its own (`script` run with `--under-callgrind`) under
    callgrind."""
    for op in wanted:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
             sys.executable, script, source, op, f"--under-callgrind={calls}"],
            capture_output=True, text=True, check=True)
        counted = int(re.search(r"Collected : (\d+)", done.stderr).group(1))
        print(f"{op:16} {counted / calls:12,.0f} instructions/request", flush=True)


def toggle_instrumentation(state):
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                   capture_output=True)


def main(source, *wanted):
    flags = dict(flag.lstrip("-").partition("=")[::2] for flag in wanted if flag.startswith("--"))
    wanted = [op for op in wanted if not op.startswith("--")]
    if "instructions" in flags:
        return count_instructions(source, wanted, int(flags["instructions"] or 200))
    # As `instance-api serve` logs (one access line per request), but to
    # nowhere: the cost of writing the line is counted, not the terminal's.
    configure_logging(stream=open(os.devnull, "w"))
    # The metrics as `instance-api serve` keeps them (files per process,
    # metrics.py); INSTANCES_METRICS=0 measures without them.
    metrics_dir = metrics.multiprocess_dir()
    try:
        return profile(source, wanted, flags)
    finally:
        metrics.remove(metrics_dir)


def profile(source, wanted, flags):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "profile.db"
        shutil.copyfile(source, work)
        app = create_app({"DATABASE": str(work)})
        plan = {op: (app, *how) for op, how in operations(work).items()}
        plan["ceiling_flask"] = (bare_flask(), "GET", "/", None)
        other = plan["get_one"][2].rsplit("/", 1)[-1]
        plan["ceiling_flask_query"] = (flask_query(str(work)), "GET", f"/{other}", None)
        plan["ceiling_flask_insert"] = (flask_insert(str(work)), "POST", f"/{other}", LOG)
        plan["ceiling_smorest_query"] = (smorest_query(str(work)), "GET", f"/{other}", None)
        plan["ceiling_smorest_insert"] = (smorest_insert(str(work)), "POST", f"/{other}", LOG)
        for op, (app, method, path, body) in plan.items():
            if wanted and op not in wanted:
                continue
            builder = EnvironBuilder(path=path, method=method, json=body)
            environ = builder.get_environ()
            environ["body"] = environ["wsgi.input"].read()
            # As waitress says of a body it has read whole (app.Request).
            environ["wsgi.input_terminated"] = True
            if "under-callgrind" in flags:
                runs = int(flags["under-callgrind"])
                for _ in range(runs):
                    call(app, environ)
                toggle_instrumentation("on")
                for _ in range(runs):
                    call(app, environ)
                toggle_instrumentation("off")
                continue
            runs = 20 if op == "batch_ingest" else 2000
            for _ in range(runs // 10):
                call(app, environ)
            started = time.perf_counter()
            for _ in range(runs):
                call(app, environ)
            spent = (time.perf_counter() - started) / runs
            print(f"{op:16} {spent * 1e6:9.0f} µs/request", flush=True)
            if wanted:
                from pyinstrument import Profiler
                with Profiler(interval=0.0001) as profiler:
                    for _ in range(runs):
                        call(app, environ)
                print(profiler.output_text(unicode=True, color=False, show_all="--all" in sys.argv))


if __name__ == "__main__":
    main(*sys.argv[1:])
