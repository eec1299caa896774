"""The two ceilings the service is measured against, served by waitress with
the service's own settings and GIL switch interval: a bare WSGI callable and
a bare Flask route, each answering a constant small JSON body. And two
references: the bare Flask route plus the least a read of the service does,
one SQLite statement by primary key (GET /<an instance's id>), and plus the
least an append does, the JSON body read and one INSERT of a log, one writer
at a time (POST /<an instance's id>); each on the thread's own connection,
through the service's SQLite driver (cysqlite) with the service's settings
(storage.engines.sqlite_pragmas: among them synchronous=NORMAL and foreign keys on).

    python bench/ceilings.py wsgi|flask PORT [THREADS]
    python bench/ceilings.py flask_query|flask_insert PORT THREADS DATABASE
"""
import json
import random
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cysqlite
import waitress
from flask import Flask, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import DEFAULTS  # noqa: E402
from server import SWITCH_INTERVAL  # noqa: E402
from storage.engines import sqlite_pragmas  # noqa: E402

BODY = b'{"status":"ok"}'


def bare_wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]


def bare_flask():
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def constant():
        return flask_app.response_class(BODY, mimetype="application/json")

    return flask_app


def connect(database):
    """A connection as the service opens one: without its settings, an
    insert would wait for fsync on every commit (SQLite's default
    synchronous=FULL) and skip the foreign key check."""
    conn = cysqlite.connect(database)
    for name, value in sqlite_pragmas():
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


def flask_query(database):
    flask_app = Flask(__name__)
    local = threading.local()

    @flask_app.get("/<row_id>")
    def one_row(row_id):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(database)
        found = conn.execute("SELECT json_object('name', name) FROM instance WHERE id = ?",
                             (row_id,)).fetchone()
        return flask_app.response_class(found[0], mimetype="application/json")

    return flask_app


def flask_insert(database):
    flask_app = Flask(__name__)
    local = threading.local()
    writer = threading.Lock()   # one writer at a time, as in the service

    @flask_app.post("/<instance_id>")
    def append(instance_id):
        entry = request.get_json()
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(database)
        with writer:
            conn.execute(
                "INSERT INTO instance_log (id, created_at, instance_id, log_type, level, "
                "message, details) VALUES (?, ?, ?, ?, 'info', ?, ?)",
                (str(uuid.UUID(int=random.getrandbits(128))), datetime.now(timezone.utc)
                 .strftime("%Y-%m-%d %H:%M:%S.%f"), instance_id, entry["log_type"],
                 entry["message"], json.dumps(entry.get("details", {}))))
        return flask_app.response_class(BODY, status=201, mimetype="application/json")

    return flask_app


def main(kind, port, threads=DEFAULTS["THREADS"], database=None):
    application = {"wsgi": lambda: bare_wsgi, "flask": bare_flask,
                   "flask_query": lambda: flask_query(database),
                   "flask_insert": lambda: flask_insert(database)}[kind]()
    sys.setswitchinterval(SWITCH_INTERVAL)  # as app.serve
    # The service's waitress settings (app.serve), so only the app differs.
    server = waitress.create_server(
        application, host="127.0.0.1", port=int(port), threads=int(threads),
        channel_timeout=DEFAULTS["CHANNEL_TIMEOUT"],
        connection_limit=DEFAULTS["CONNECTION_LIMIT"],
        max_request_header_size=DEFAULTS["MAX_HEADER_BYTES"], ident="ceiling")
    print(f"Listening on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
