"""The two ceilings the service is measured against, served by waitress with
the service's own settings and GIL switch interval: a bare WSGI callable and
a bare Flask route, each answering a constant small JSON body. And two
references: the bare Flask route plus the least a read of the service does,
one SQLite statement by primary key (GET /<an instance's id>), and plus the
least an append does, the JSON body read and one INSERT of a log, one writer
at a time (POST /<an instance's id>); each on the thread's own connection,
through the service's SQLite driver (cysqlite) with the service's settings
(storage.engines.sqlite_pragmas: among them synchronous=NORMAL and foreign keys on).

Two more references say what the service's stack costs by itself: the same
read and append as a bare flask-smorest route with plain marshmallow schemas
(smorest_query, smorest_insert), the way that stack's docs write one. And
pg_flask_query is flask_query on PostgreSQL (psycopg, a prepared statement
on the thread's own connection): what the engine alone costs the least read.

    python bench/ceilings.py wsgi|flask PORT [THREADS]
    python bench/ceilings.py flask_query|flask_insert|smorest_query|smorest_insert \
        PORT THREADS DATABASE
    python bench/ceilings.py pg_flask_query PORT THREADS postgresql://...
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
from flask.views import MethodView
from flask_smorest import Api, Blueprint
from marshmallow import Schema, fields, validate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from settings import DEFAULTS  # noqa: E402
from models import LOG_LEVELS  # noqa: E402
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
    return query_route(lambda: connect(database),
                       "SELECT json_object('name', name) FROM instance WHERE id = ?")


def pg_flask_query(url):
    import psycopg
    # psycopg prepares a statement from its fifth run on (prepare_threshold).
    return query_route(lambda: psycopg.connect(url, autocommit=True),
                       "SELECT json_build_object('name', name)::text FROM instance "
                       "WHERE id = %s")


def query_route(open_connection, statement):
    """A bare Flask route answering one row's JSON, read by `statement` on
    the thread's own connection."""
    flask_app = Flask(__name__)
    local = threading.local()

    @flask_app.get("/<row_id>")
    def one_row(row_id):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = open_connection()
        found = conn.execute(statement, (row_id,)).fetchone()
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


def smorest_app():
    """A bare flask-smorest application: the service's stack as its docs
    show it, without what the service adds (ETags, request ids, the access
    line, idempotency, problem details, its own JSON and schema shortcuts)."""
    flask_app = Flask(__name__)
    flask_app.config.update(API_TITLE="reference", API_VERSION="1", OPENAPI_VERSION="3.1.0")
    api = Api(flask_app)
    return flask_app, api, Blueprint("reference", __name__)


class InstanceOut(Schema):
    id = fields.UUID()
    site_id = fields.UUID()
    user_id = fields.UUID()
    name = fields.String()
    instance_type = fields.String()
    status = fields.String()
    agent_id = fields.UUID(allow_none=True)
    configuration = fields.Dict()
    environment_variables = fields.Dict()
    labels = fields.Dict()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class LogIn(Schema):
    log_type = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9][a-z0-9_.-]*$"))
    level = fields.String(load_default="info", validate=validate.OneOf(LOG_LEVELS))
    message = fields.String(required=True, validate=validate.Length(1, 65536))
    details = fields.Dict(load_default=dict)


class LogOut(LogIn):
    id = fields.UUID()
    instance_id = fields.UUID()
    created_at = fields.DateTime()


def smorest_query(database):
    """The stack's least read: a route whose schema dumps one row of the
    instance table, read by primary key."""
    flask_app, api, blp = smorest_app()
    local = threading.local()
    columns = list(InstanceOut().fields)

    @blp.route("/<uuid:row_id>")
    class One(MethodView):
        @blp.response(200, InstanceOut)
        def get(self, row_id):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = connect(database)
            row = dict(zip(columns, conn.execute(
                f"SELECT {', '.join(columns)} FROM instance WHERE id = ?",
                (str(row_id),)).fetchone()))
            for name in ("configuration", "environment_variables", "labels"):
                row[name] = json.loads(row[name])
            for name in ("created_at", "updated_at"):
                row[name] = datetime.fromisoformat(row[name]).replace(tzinfo=timezone.utc)
            return row

    api.register_blueprint(blp)
    return flask_app


def smorest_insert(database):
    """The stack's least append: a route whose schema loads and validates
    the body, one INSERT of a log (one writer at a time, as flask_insert),
    and the new row dumped by the output schema."""
    flask_app, api, blp = smorest_app()
    local = threading.local()
    writer = threading.Lock()

    @blp.route("/<uuid:instance_id>")
    class Logs(MethodView):
        @blp.arguments(LogIn)
        @blp.response(201, LogOut)
        def post(self, entry, instance_id):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = connect(database)
            row = {**entry, "id": uuid.UUID(int=random.getrandbits(128)),
                   "instance_id": instance_id, "created_at": datetime.now(timezone.utc)}
            with writer:
                conn.execute(
                    "INSERT INTO instance_log (id, created_at, instance_id, log_type, level, "
                    "message, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (str(row["id"]), row["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f"),
                     str(instance_id), row["log_type"], row["level"], row["message"],
                     json.dumps(row["details"])))
            return row

    api.register_blueprint(blp)
    return flask_app


def main(kind, port, threads=DEFAULTS["THREADS"], database=None):
    application = {"wsgi": lambda: bare_wsgi, "flask": bare_flask,
                   "flask_query": lambda: flask_query(database),
                   "pg_flask_query": lambda: pg_flask_query(database),
                   "flask_insert": lambda: flask_insert(database),
                   "smorest_query": lambda: smorest_query(database),
                   "smorest_insert": lambda: smorest_insert(database)}[kind]()
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
