"""What a request says to PostgreSQL: the statements and round trips of
each operation, counted from libpq's own trace of the protocol (every
message the driver sends and receives), with the app called in-process as
bench/profile.py calls it. Counts, not times: the same on a busy machine.

    python bench/roundtrips.py postgresql://postgres@127.0.0.1:5432/DB [OP ...] [--show]
    python bench/roundtrips.py URL --instructions OP ...

DB is a seeded database (bench/seed.py small URL); the writes change it.
A round trip is a message that makes the server answer (a simple Query, or
the Sync that ends an extended-protocol exchange); each Parse is a
statement prepared, each Bind one run. --show prints each request's
messages. --instructions counts the service's CPU instructions per request
instead (this process only, not the server's), under callgrind as
bench/profile.py --instructions does, to compare with SQLite's there.
"""
import os
import re
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

from werkzeug.test import EnvironBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from bench.profile import count_instructions, toggle_instrumentation  # noqa: E402

SITE, USER = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01", "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
LOG = {"log_type": "agent_action", "message": "clicked the button", "details": {"x": 1}}
CALLS = 8   # per operation, after as many warm-up calls: past psycopg's prepare threshold


def operations(url):
    import psycopg
    with psycopg.connect(url) as conn:
        hot = conn.execute("SELECT id FROM instance ORDER BY log_count DESC LIMIT 1").fetchone()[0]
        other, site = conn.execute("SELECT id, site_id FROM instance WHERE id != %s "
                                   "ORDER BY created_at LIMIT 1 OFFSET 10", (hot,)).fetchone()
        first = conn.execute("SELECT id FROM instance_log WHERE instance_id = %s "
                             "ORDER BY seq LIMIT 1", (hot,)).fetchone()[0]
    hot, other, site, first = (str(uuid.UUID(str(value))) for value in (hot, other, site, first))
    return {
        "get_one": ("GET", f"/api/instances/{other}", None),
        "list_filtered": ("GET", f"/api/instances?site_id={site}&status=running&limit=50", None),
        "list_logs": ("GET", f"/api/instances/{hot}/logs?limit=50", None),
        "tail": ("GET", f"/api/instances/{hot}/logs?after={first}&limit=50", None),
        "list_by_label": ("GET", "/api/instances?label=env%3Dprod&limit=50", None),
        "list_q": ("GET", "/api/instances?q=gpu&limit=50", None),
        "count": ("GET", f"/api/instances/counts?site_id={site}", None),
        "create_instance": ("POST", "/api/instances",
                            {"site_id": SITE, "user_id": USER, "name": "bench"}),
        "append_log": ("POST", f"/api/instances/{other}/logs", LOG),
        "patch": ("PATCH", f"/api/instances/{other}", {"name": "renamed"}),
    }


# A line of libpq's trace (PQtrace, timestamps suppressed): direction,
# length, message type, contents.
LINE = re.compile(r"(F|B)\t\d+\t(\w+)\s?(.*)")


def messages(text):
    for line in text.splitlines():
        found = LINE.match(line)
        if found:
            yield found.groups()


def summary(sent):
    """Round trips and statements in the messages the client sent."""
    kinds = Counter(kind for kind, _ in sent)
    return {"round trips": kinds["Query"] + kinds["Sync"], "queries": kinds["Query"],
            "parses": kinds["Parse"], "binds": kinds["Bind"]}


def instructions(url, names, calls=200):
    """Instructions per request of each operation, as profile.py counts them."""
    count_instructions(url, names, calls, script=__file__)


def main(url, *names):
    show = "--show" in names
    flags = dict(name.lstrip("-").partition("=")[::2] for name in names if name.startswith("--"))
    if "instructions" in flags:
        return instructions(url, [name for name in names if not name.startswith("--")])
    names = [name for name in names if not name.startswith("--")]
    ops = operations(url)
    os.environ["INSTANCES_DATABASE_URL"] = url
    app = create_app({"METRICS": True})
    database = app.database
    trace = tempfile.NamedTemporaryFile("w+", prefix="roundtrips-", suffix=".trace")
    connect = type(database)._connect

    def traced_connect(self):
        conn = connect(self)
        from psycopg.pq import Trace
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        return conn

    if "under-callgrind" not in flags:
        type(database)._connect = traced_connect
    database.close_all()   # connections made from here on are traced

    def call(method, path, body):
        environ = EnvironBuilder(path=path, method=method, json=body).get_environ()
        status = []
        chunks = app(environ, lambda s, headers, exc_info=None: status.append(s))
        b"".join(chunks)
        if not status[0].startswith("2"):
            raise SystemExit(f"{method} {path}: {status[0]}")

    prepared = {}
    for name in names or ops:
        method, path, body = ops[name]
        if "under-callgrind" in flags:
            runs = int(flags["under-callgrind"])
            for _ in range(runs):
                call(method, path, body)
            toggle_instrumentation("on")
            for _ in range(runs):
                call(method, path, body)
            toggle_instrumentation("off")
            continue
        for _ in range(CALLS):
            call(method, path, body)
        trace.flush()
        start = os.fstat(trace.fileno()).st_size
        for _ in range(CALLS):
            call(method, path, body)
        os.fsync(trace.fileno())
        with open(trace.name) as traced:
            traced.seek(start)
            text = traced.read()
        with open(trace.name) as traced:
            # Each statement's SQL, from the Parse that prepared it.
            for direction, kind, rest in messages(traced.read()):
                if direction == "F" and kind == "Parse":
                    statement, _, sql = rest.strip().partition(" ")
                    prepared[statement] = sql.rsplit(" ", 1)[0]
        sent = [(kind, rest) for direction, kind, rest in messages(text) if direction == "F"]
        counts = summary(sent)
        print(f"{name:16}" + "  ".join(f"{key} {value / CALLS:g}"
                                       for key, value in counts.items()))
        if show:
            for kind, rest in sent[:len(sent) // CALLS]:
                if kind in ("Bind", "Query", "Parse"):
                    statement = rest.split()[1] if kind == "Bind" else ""
                    print(f"    {kind} {statement} {prepared.get(statement, rest)[:300]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
