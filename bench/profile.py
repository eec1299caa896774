"""Where a request's time goes, in-process: the service's WSGI app called
directly (no sockets, no load generator), so the figures are the app's own
cost per request. Run it on a seeded dataset (bench/seed.py):

    python bench/profile.py bench/data/small.seed.db            # µs per request
    python bench/profile.py bench/data/small.seed.db get_one    # and its profile

The database is copied first; the writes go to the copy.
"""
import io
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from werkzeug.test import EnvironBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import configure_logging, create_app  # noqa: E402
from bench.ceilings import bare_flask  # noqa: E402

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
    }


def call(app, environ):
    statuses = []
    body = b"".join(app(dict(environ, **{"wsgi.input": io.BytesIO(environ["body"])}),
                        lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0][0] == "2", (statuses, body[:300])


def main(source, *wanted):
    # As `instance-api serve` logs (one access line per request), but to
    # nowhere: the cost of writing the line is counted, not the terminal's.
    configure_logging(stream=open(os.devnull, "w"))
    wanted = [op for op in wanted if not op.startswith("--")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "profile.db"
        shutil.copyfile(source, work)
        app = create_app({"DATABASE": str(work)})
        plan = {op: (app, *how) for op, how in operations(work).items()}
        plan["ceiling_flask"] = (bare_flask(), "GET", "/", None)
        for op, (app, method, path, body) in plan.items():
            if wanted and op not in wanted:
                continue
            builder = EnvironBuilder(path=path, method=method, json=body)
            environ = builder.get_environ()
            environ["body"] = environ["wsgi.input"].read()
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
