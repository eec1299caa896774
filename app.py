"""Application factory, the one error handler, and the waitress entry point."""
import argparse
import collections
import io
import ipaddress
import json
import logging
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from urllib.parse import urlsplit

import flask_smorest
import orjson
import waitress
from flask import Flask, Request as FlaskRequest, Response as FlaskResponse, current_app, request
from flask.json.provider import JSONProvider
from peewee import DatabaseError
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask
from werkzeug.exceptions import InternalServerError, ServiceUnavailable
from werkzeug.utils import cached_property

import models
from routes import BLUEPRINTS
from routes.access import load_tokens, protected, require_token
from routes.docs import HttpDocs, page as docs_page
from routes.ui import blp as dashboard
from schemas import LogCreateSchema, ProblemSchema

log = logging.getLogger("instance_api")
access_log = logging.getLogger("instance_api.access")

DEFAULTS = {
    "DATABASE": "instances.db",
    "DATABASE_URL": "",
    "HOST": "127.0.0.1",
    "PORT": 8080,
    "THREADS": 8,
    "WORKERS": 1,
    "MAX_BODY_BYTES": 1 << 20,
    "MAX_HEADER_BYTES": 64 << 10,
    "BUSY_TIMEOUT": 5.0,
    "SYNCHRONOUS": "NORMAL",
    "CHANNEL_TIMEOUT": 30,
    "CONNECTION_LIMIT": 256,
    "CHECKPOINT_INTERVAL": 60.0,
    "API_TOKENS": "",
    "API_TOKENS_FILE": "",
    "ALLOW_OPEN_NETWORK": False,
    "API_TITLE": "Instance Management API",
    "API_VERSION": "1.0.0",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    # No OPENAPI_SWAGGER_UI_*: /api/docs is routes/docs.py's page, whose script
    # is a file (CSP) where flask-smorest's template has an inline one.
    "API_SPEC_OPTIONS": {
        "info": {
            "description": "Records of the remote machines (Ubuntu desktops, browsers, "
                           "Windows desktops) that AI agents drive, with each machine's "
                           "logs and plans. Every error is RFC 9457 problem JSON.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
    },
}
PROBLEM_TYPE = "about:blank"
# 2.4: an X-Request-ID is echoed only when it is a sane token; anything else
# (too long, spaces, control characters) could forge or break log lines.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")

# Details for the errors raised by routing and werkzeug, whose stock sentences
# say little to a curl user; errors raised by our code carry their own message.
DETAILS = {
    404: lambda error: f"Nothing is served at {request.path}.",
    405: lambda error: f"{request.method} is not allowed on {request.path}; "
                       f"allowed: {', '.join(sorted(error.valid_methods or ()))}.",
    413: lambda error: "The body is larger than the limit of "
                       f"{current_app.config['MAX_CONTENT_LENGTH']} bytes.",
}


class Request(FlaskRequest):
    """Flask's request, reading a body it is handed whole as it is."""

    @cached_property
    def stream(self):
        # waitress reads the whole body before the app runs, and says so
        # (wsgi.input_terminated); werkzeug's LimitedStream around it reads
        # it again in Python, a chunk at a time: 15 µs of a 600 µs POST.
        # Anything else, or a body past the limit (413), goes werkzeug's way.
        length, limit = self.content_length, self.max_content_length
        if (length is not None and self.environ.get("wsgi.input_terminated")
                and (limit is None or length <= limit)):
            return io.BytesIO(self.environ["wsgi.input"].read(length))
        return super().stream


# A URL with nothing that werkzeug's iri_to_uri would quote or re-encode.
PLAIN_URL = re.compile(r"https?://[\w.:\[\]-]+(/[\w.~-]*)*", re.ASCII)


class Response(FlaskResponse):
    """Flask's response, passing on a plain Location as it is."""

    def get_wsgi_headers(self, environ):
        # werkzeug turns every Location into a URI (split, quote each part,
        # join): 10 µs of a POST, for a URL built from this service's own
        # routes that is one already.
        location = self.headers.get("Location")
        if location is None or not PLAIN_URL.fullmatch(location):
            return super().get_wsgi_headers(environ)
        del self.headers["Location"]
        try:
            headers = super().get_wsgi_headers(environ)
        finally:
            self.headers["Location"] = location
        headers["Location"] = location
        return headers


class App(Flask):
    """Flask, without the coroutine check on each view and hook call (six per
    request): nothing here is async."""

    request_class = Request
    response_class = Response

    def ensure_sync(self, func):
        return func


class OrjsonProvider(JSONProvider):
    """Fast, strict JSON for responses; key order follows the schemas."""

    mimetype = "application/json"

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj).decode()

    def response(self, *args, **kwargs):
        # The bytes orjson makes, as they are: a list page is tens of KiB,
        # which dumps() would decode only for the response to encode again.
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj), mimetype=self.mimetype)

    def loads(self, s, **kwargs):
        return orjson.loads(s)


class Api(flask_smorest.Api):
    """smorest's Api with every HTTP error rendered as RFC 9457 problem JSON."""

    # The document lists each error status a route can give (routes/docs.py)
    # instead of smorest's catch-all "default", all with the problem schema.
    DEFAULT_ERROR_RESPONSE_NAME = None
    ERROR_SCHEMA = ProblemSchema

    def _register_pagination_header(self):
        """Lists page with limit/offset, not smorest's pagination header."""

    def handle_http_exception(self, error):
        return problem(error)


def problem(error):
    """The problem+json response for an HTTPException (CONTRACT 1.5).

    Headers werkzeug sets on the error (such as Allow on a 405) are kept.
    webargs' abort() carries `message`, validation `messages` and `headers`.
    """
    data = getattr(error, "data", None) or {}
    body = {
        "type": PROBLEM_TYPE,
        "title": error.name,
        "status": error.code,
        "detail": data.get("message") or DETAILS.get(error.code, describe)(error),
    }
    errors = data.get("errors") or data.get("messages")
    if errors:
        body["detail"] = "The request did not pass validation: " + ", ".join(
            f"{where}.{field}" for where, fields in errors.items() for field in fields) + "."
        body["errors"] = errors
    if error.code >= 500:
        body["request_id"] = request_id()
    response = error.get_response()
    # List and batch errors are keyed by position (int keys).
    response.set_data(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))
    response.mimetype = "application/problem+json"
    response.headers.update(data.get("headers") or {})
    return response


def describe(error):
    return error.description


def handle_database_error(exc):
    """503 with Retry-After for a database that cannot serve the request
    right now; any other database error is a fault (500)."""
    reason = models.unavailable(exc)
    if reason is None:
        return handle_unexpected(exc)
    log.warning("Database unavailable for %s %s (request %s): %s",
                request.method, request.path, request_id(), reason)
    busy = any(word in reason for word in ("lock", "busy", "serialize", "deadlock"))
    return problem(ServiceUnavailable(
        description=f"The database cannot take this request now ({reason}); "
                    "nothing was written. Retry later.",
        retry_after=1 if busy else 30))


def handle_unexpected(exc):
    """A fault no handler expected: full trace in the log, nothing to the client."""
    log.exception("Unhandled error in %s %s (request %s)",
                  request.method, request.path, request_id())
    return problem(InternalServerError(
        description="An unexpected error occurred; it was logged with this request_id."))


# Environment values arrive as text (or whatever JSON they parse as), so each
# setting is brought to its type once, with an error that names the variable.
def flag(value):
    """A yes/no setting: true/false, yes/no, on/off, 1/0 (any case)."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def synchronous(value):
    text = str(value).strip().upper()
    if text not in models.SYNCHRONOUS:
        raise ValueError(value)
    return text


def positive(kind):
    def convert(value):
        number = kind(value)
        if number <= 0:
            raise ValueError(value)
        return number
    convert.__name__ = f"positive {kind.__name__}"
    return convert


SETTING_TYPES = {
    "DATABASE": str, "DATABASE_URL": str, "HOST": str, "PORT": int,
    "THREADS": positive(int), "WORKERS": positive(int),
    "MAX_BODY_BYTES": positive(int), "MAX_HEADER_BYTES": positive(int),
    "BUSY_TIMEOUT": positive(float), "SYNCHRONOUS": synchronous,
    "CHANNEL_TIMEOUT": positive(int), "CONNECTION_LIMIT": positive(int),
    "CHECKPOINT_INTERVAL": positive(float), "API_TOKENS": str, "API_TOKENS_FILE": str,
    "ALLOW_OPEN_NETWORK": flag,
}
SECRET = ("API_TOKENS", "DATABASE_URL")  # may hold secrets: never repeated in a message


def coerce_settings(config):
    for key, kind in SETTING_TYPES.items():
        value = config[key]
        try:
            config[key] = kind(value)
        except (TypeError, ValueError):
            shown = "(hidden)" if key in SECRET else repr(value)
            raise ValueError(f"INSTANCES_{key} (or the {key} setting) is not a valid "
                             f"{kind.__name__}: {shown}") from None
    config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]
    try:
        config["TOKENS"] = load_tokens(config["API_TOKENS"], config["API_TOKENS_FILE"])
    except (OSError, ValueError) as exc:  # missing, a directory, not UTF-8
        raise ValueError(f"INSTANCES_API_TOKENS_FILE ({config['API_TOKENS_FILE']}) cannot "
                         f"be read: {exc}") from None
    # Fail closed: a token setting that yields no token is a mistake, not a
    # request for an open API.
    if not config["TOKENS"] and (config["API_TOKENS"].strip() or config["API_TOKENS_FILE"]):
        raise ValueError("INSTANCES_API_TOKENS or INSTANCES_API_TOKENS_FILE is set but holds "
                         "no token")


def database_target(config):
    """DATABASE_URL when set (SQLite or PostgreSQL), else the SQLite file."""
    return config["DATABASE_URL"] or config["DATABASE"]


def shown_database(config):
    """The database for a log line: a file's absolute path, or a URL
    without its password."""
    target = database_target(config)
    if "://" not in target:
        return os.path.abspath(target)
    parts = urlsplit(target)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return parts.geturl()


def create_app(config=None):
    """Build the app: defaults, then INSTANCES_* variables, then `config`."""
    app = App(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("INSTANCES")
    app.config.update(config or {})
    coerce_settings(app.config)

    models.db.initialize(models.open_database(
        database_target(app.config), busy_timeout=app.config["BUSY_TIMEOUT"],
        synchronous=app.config["SYNCHRONOUS"]))
    models.create_tables()
    if app.config["DATABASE"] != ":memory:":
        models.verify_wal()
    tokens = app.config["TOKENS"]

    if tokens:
        @app.before_request
        def check_token():
            if protected(request.path):
                require_token(tokens)

    @app.teardown_request
    def release_connection(exc):
        # Runs after errors too, so a failed request leaves no transaction
        # open on its connection.
        models.db.release()

    api = Api(app, spec_kwargs={"extra_plugins": [
        HttpDocs({"Problem": ProblemSchema, "LogCreate": LogCreateSchema})]})
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    # Pages for browsers, not API: registered beside the Api, so they stay out
    # of the OpenAPI document.
    app.register_blueprint(docs_page)
    app.register_blueprint(dashboard)
    app.register_error_handler(Exception, handle_unexpected)
    app.register_error_handler(DatabaseError, handle_database_error)
    app.register_error_handler(models.WriterBusy, handle_database_error)
    app.wsgi_app = Traced(app.wsgi_app)
    return app


class Traced:
    """WSGI middleware for what every response carries: the request id
    (X-Request-ID, the one sent when it is sane, else a new one), nosniff,
    and its access log line.

    Done on the WSGI call rather than in Flask's request hooks (request
    proxies, Headers, g), which cost about 20 of the 120 µs of a GET by id
    in-process, and under load a request's Python time is several times
    its in-process time (README "Where the time goes")."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        # 128 random bits from the random module, not uuid4: that reads the
        # OS's random source, a system call per request where only
        # uniqueness is needed. random reseeds in each forked worker.
        request_id = environ[REQUEST_ID] = (sent if SANE_REQUEST_ID.fullmatch(sent)
                                            else f"{random.getrandbits(128):032x}")

        def start(status, headers, exc_info=None):
            if status.startswith("204"):
                # smorest labels a 204 as JSON; a response without a body has no type.
                headers = [(name, value) for name, value in headers
                           if name.lower() != "content-type"]
            # Browsers must not guess a type other than the one declared.
            headers += [("X-Request-ID", request_id), ("X-Content-Type-Options", "nosniff")]
            if access_log.isEnabledFor(logging.INFO):
                query = environ.get("QUERY_STRING")
                path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
                line = (f"{environ['REQUEST_METHOD']} {f'{path}?{query}' if query else path} "
                        f"{status[:3]} {(time.perf_counter() - started) * 1000:.1f}ms "
                        f"request_id={request_id}")
                if access_lines is None:
                    access_log.info("%s", line)
                else:
                    access_lines.line(access_log.name, line)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


REQUEST_ID = "instance_api.request_id"


def request_id():
    return request.environ.get(REQUEST_ID)


class ProblemErrorTask(ErrorTask):
    """waitress answers some requests itself (a body past its own limit,
    malformed HTTP); those answers are problem JSON too (CONTRACT 1.5)."""

    def execute(self):
        error = self.request.error
        body = orjson.dumps({"type": PROBLEM_TYPE, "title": error.reason,
                             "status": error.code, "detail": f"{error.reason}: {error.body}."})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/problem+json"),
                                      ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class FramingParser(HTTPRequestParser):
    """Refuse a request whose body length is ambiguous (RFC 9112 6.1): both
    Content-Length and Transfer-Encoding, or Transfer-Encoding in HTTP/1.0.
    waitress would go by one of them and keep the connection open, so bytes
    that a proxy in front read as part of the body would be served here as a
    second request: request smuggling. A 400 closes the connection."""

    def parse_header(self, header_plus):
        if b"transfer-encoding" not in header_plus.lower():
            return super().parse_header(header_plus)
        first, *lines = header_plus.split(b"\n")
        names = {line.split(b":", 1)[0].strip().lower() for line in lines if b":" in line}
        if b"transfer-encoding" in names and (
                b"content-length" in names or first.rstrip().upper().endswith(b"HTTP/1.0")):
            raise ParsingError("Transfer-Encoding with Content-Length or in HTTP/1.0 "
                               "leaves the body length ambiguous")
        return super().parse_header(header_plus)


class ProblemChannel(HTTPChannel):
    error_task_class = ProblemErrorTask
    parser_class = FramingParser


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api",
        description="Serve the Instance Management API with waitress. Flags override "
                    "the INSTANCES_* environment variables.",
        epilog="`instance-api serve [flags]` is the same as `instance-api [flags]`. Other "
               "commands: `instance-api openapi [FILE]` writes the OpenAPI "
               "document; `instance-api backup PATH` copies the database while it is "
               "in use.")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one "
                                                 "(default 8080)")
    parser.add_argument("--threads", type=int, help="worker threads per process (default 8)")
    parser.add_argument("--workers", type=int,
                        help="server processes sharing the port (default 1)")
    parser.add_argument("--db", dest="database", help="SQLite file (default instances.db)")
    parser.add_argument("--database-url", help="sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DB (wins over --db)")
    parser.add_argument("--allow-open-network", action="store_true", default=None,
                        help="serve on a non-loopback address without API tokens, "
                             "on purpose")
    args = parser.parse_args(argv)
    return {key.upper(): value for key, value in vars(args).items() if value is not None}


def main(argv=None):
    """`instance-api [serve] [flags]` serves; `instance-api openapi [FILE]`
    writes the API's OpenAPI document; `instance-api backup PATH` copies the
    database."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"serve": serve, "openapi": write_openapi, "backup": backup}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return serve(argv)


def write_openapi(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api openapi",
        description="Write the OpenAPI document that GET /api/openapi.json serves.")
    parser.add_argument("file", nargs="?", help="where to write it (default: standard output)")
    args = parser.parse_args(argv)
    # The document does not depend on the data, so no database file is made.
    app = create_app({"DATABASE": ":memory:"})
    text = json.dumps(app.test_client().get("/api/openapi.json").get_json(), indent=2) + "\n"
    models.db.close_all()
    if args.file:
        with open(args.file, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


class LineBatches(logging.Handler):
    """Log lines written to `stream` by a thread of its own, every `interval`
    seconds, all that came in meanwhile in one write; a warning or error at
    once, with those before it.

    Written as they come, each access line took the handler's lock and a
    system call that gives up the GIL, in the middle of its request: at 8
    connections a GET by id spent as much server CPU on its log line as on
    its query (README "Where the time goes"). Here a request only formats
    its line and appends it to a deque, which needs no lock."""

    def __init__(self, stream, interval=0.05):
        super().__init__()
        self.stream, self.interval = stream, interval
        self.lines = collections.deque()
        self.start()
        # The thread does not survive a fork (--workers): each worker starts
        # its own, and leaves the lines buffered before the fork to the parent.
        os.register_at_fork(after_in_child=self.start)

    def start(self):
        self.lines.clear()
        self.writing, self.closed = threading.Lock(), threading.Event()
        threading.Thread(target=self.write_every, name="log-lines", daemon=True).start()

    def handle(self, record):
        # Handler.handle would take the handler's lock around emit.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def line(self, name, message):
        """An INFO line of logger `name`, as emit() would write a record of
        it, without the record: the access line of every request (Traced).
        Making and formatting a LogRecord, through the logger and handler
        calls around it, was 60,000 of the 700,000 instructions of a GET by
        id; this is a tenth of that."""
        self.lines.append(self.formatter.line(name, "INFO", message))

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.WARNING:
            self.flush()

    def write_every(self):
        while not self.closed.wait(self.interval):
            self.flush()

    def close(self):
        self.closed.set()
        self.flush()
        super().close()

    def flush(self):
        with self.writing:
            taken = [self.lines.popleft() for _ in range(len(self.lines))]
            if taken:
                try:
                    self.stream.write("\n".join(taken) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass   # stderr is gone; there is nowhere to say so


class Formatter(logging.Formatter):
    """logging's default time format, with the date and time up to the
    second formatted once per second rather than once per line."""

    _second = (None, "")

    def formatTime(self, record, datefmt=None):
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created, record.msecs)

    def stamp(self, created, msecs):
        second, text = self._second
        if second != int(created):
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second, text
        return self.default_msec_format % (text, msecs)

    def line(self, name, levelname, message, created=None):
        """What format() writes for a record of logger `name` at `levelname`
        with `message`, made at `created` (now), without the record. For
        formats of those and the time only (LINE_FORMAT)."""
        created = time.time() if created is None else created
        return self._fmt % {"asctime": self.stamp(created, int((created % 1) * 1000)),
                            "levelname": levelname, "name": name, "message": message}


# How long a thread may hold the GIL while others wait (CPython's default is
# 5 ms). A writer holding the write lock must get the GIL back after each
# SQLite call; behind threads busy parsing and serializing, it waited up to
# 5 ms each time, and POSTs at 32 connections ran at half the rate of 8
# (bench/run.py: append_log 502 req/s at 5 ms, 761 at 0.5 ms; GETs and the
# bare-Flask ceiling unchanged).
SWITCH_INTERVAL = 0.0005


LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Where access lines go without a LogRecord (LineBatches.line), once
# configure_logging has set up the handler; else through access_log.
access_lines = None


def configure_logging(stream=None):
    """Log lines as `instance-api serve` writes them: one per request from
    the access log, on stderr unless `stream` is given, written a few
    times a second (LineBatches)."""
    global access_lines
    handler = LineBatches(stream or sys.stderr)
    handler.setFormatter(Formatter(LINE_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # When the access log's lines go to this handler alone (no handler of
    # its own, and this one is the root's).
    access_lines = (handler if logging.getLogger().handlers == [handler]
                    and not access_log.handlers and access_log.propagate else None)
    # The format shows no thread, process or source line, so a record need
    # not look them up: a third of the cost of a line (the logging module's
    # own advice on optimization).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None


def serve(argv):
    """Serve the app with waitress until SIGTERM or Ctrl-C, then finish the
    requests in flight and exit 0. With --workers N, N processes share one
    listening socket."""
    configure_logging()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        app = create_app(parse_args(argv))
        cfg = app.config
        refuse_open_network(cfg)
        if cfg["WORKERS"] == 1:
            server = make_server(app, host=cfg["HOST"], port=cfg["PORT"])
        else:
            listener = bind(cfg["HOST"], cfg["PORT"])
    # A bad setting, a taken port, an unwritable file, a file from a newer server.
    except (ValueError, OSError, DatabaseError, models.SchemaTooNew, models.DatabaseUnfit) as exc:
        log.error("Cannot start: %s", exc)
        return 2
    if cfg["WORKERS"] == 1:
        log.info("Listening on http://%s:%s with database %s", server.effective_host,
                 server.effective_port, shown_database(cfg))
        return run(server, cfg)
    host, port = listener.getsockname()[:2]
    log.info("Listening on http://%s:%s with database %s (%d worker processes)",
             host, port, shown_database(cfg), cfg["WORKERS"])
    return prefork(app, listener, cfg["WORKERS"])


def make_server(app, **where):
    """waitress with the service's settings, on host/port or on `sockets`."""
    cfg = app.config
    server = waitress.create_server(
        app, threads=cfg["THREADS"],
        # A backstop only: Flask answers oversized bodies first, as problem JSON.
        max_request_body_size=cfg["MAX_CONTENT_LENGTH"] + (64 << 10),
        max_request_header_size=cfg["MAX_HEADER_BYTES"],
        # An idle or stalled connection (a slowloris) is dropped after this
        # many seconds, and no more than this many are held at once.
        channel_timeout=cfg["CHANNEL_TIMEOUT"], connection_limit=cfg["CONNECTION_LIMIT"],
        # waitress looks for timed-out connections every cleanup_interval
        # (30 s by default), which would stretch a short channel_timeout.
        cleanup_interval=max(1, min(30, cfg["CHANNEL_TIMEOUT"] // 2)),
        ident="instance-api", **where,
    )
    server.channel_class = ProblemChannel
    return server


def run(server, cfg):
    """The serving loop of one process, until SIGTERM or SIGINT."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.set())
    checkpoints = threading.Thread(target=checkpoint_every, daemon=True,
                                   args=(cfg["CHECKPOINT_INTERVAL"], stopping))
    checkpoints.start()
    try:
        while not stopping.is_set():
            wasyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)
        drain(server, deadline=time.monotonic() + 8)
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=1)
        models.db.close_all()
    log.info("Stopped")
    return 0


def bind(host, port):
    """A listening socket made before the workers fork, so they share it and
    the kernel spreads connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(1024)
    return listener


def prefork(app, listener, workers):
    """Fork `workers` serving processes on `listener` and watch them: one that
    dies is replaced; SIGTERM or SIGINT is passed on, and each worker
    finishes its requests in flight before the parent exits 0."""
    # No connection may cross the fork: each worker opens its own.
    models.db.close_all()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.set())

    def spawn():
        pid = os.fork()
        if pid == 0:  # the worker
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run(make_server(app, sockets=[listener]), app.config)
            finally:
                logging.shutdown()   # its last lines: os._exit skips this
                os._exit(code)
        return pid

    children = {spawn() for _ in range(workers)}
    while not stopping.is_set():
        stopping.wait(0.2)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid and not stopping.is_set():
            log.warning("Worker %d exited (status %d); starting another", pid, status)
            children.discard(pid)
            children.add(spawn())
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        children.discard(pid)
        time.sleep(0.05)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    listener.close()
    log.info("Stopped")
    return 0


def refuse_open_network(cfg):
    """2.3: no API reachable from the network without tokens, by accident."""
    host = cfg["HOST"]
    if cfg["TOKENS"] or cfg["ALLOW_OPEN_NETWORK"] or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass  # a host name: it may resolve to anything
    raise ValueError(
        f"--host {host} would open the API to the network without tokens; set "
        "INSTANCES_API_TOKENS or INSTANCES_API_TOKENS_FILE, or pass --allow-open-network "
        "(INSTANCES_ALLOW_OPEN_NETWORK=1) if that is what you want")


def drain(server, deadline):
    """Stop accepting, then keep serving the connections that have a request
    in flight or a response still to send, until they are done or the
    deadline passes."""
    server.del_channel()
    server.socket.close()
    log.info("Stopping: finishing the requests in flight")

    def busy():
        dispatcher = server.task_dispatcher
        return dispatcher.active_count or dispatcher.queue or any(
            getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
            for channel in list(server._map.values()))

    while busy() and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)


def checkpoint_every(interval, stopping):
    """Copy the WAL into the database file now and then, so the -wal file
    stays small even when readers keep SQLite's own checkpoints from
    finishing; journal_size_limit then truncates it."""
    while not stopping.wait(interval):
        try:
            with models.db.connection_context():
                models.db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except DatabaseError as exc:
            log.warning("Checkpoint failed: %s", exc)


def backup(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api backup",
        description="Copy the database to PATH while the server keeps running (SQLite's "
                    "online backup), then check the copy with integrity_check.")
    parser.add_argument("path", help="the file to write; it must not exist yet")
    parser.add_argument("--db", help="the database to copy (default: INSTANCES_DATABASE "
                                     "or instances.db)")
    args = parser.parse_args(argv)
    source = args.db or os.environ.get("INSTANCES_DATABASE") or DEFAULTS["DATABASE"]
    url = os.environ.get("INSTANCES_DATABASE_URL", "")
    if not args.db and url.startswith(("postgresql://", "postgres://")):
        print("Backup failed: this command copies a SQLite file; back up PostgreSQL with its "
              "own tools (pg_dump, or the managed service's snapshots)", file=sys.stderr)
        return 1
    if not args.db and url.startswith("sqlite:///"):
        source = url[len("sqlite:///"):]
    try:
        pages = models.backup(source, args.path, progress=report_progress)
    except (OSError, sqlite3.Error, models.BackupFailed) as exc:
        print(f"Backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"Backed up {os.path.abspath(source)} to {os.path.abspath(args.path)} "
          f"({pages} pages); integrity_check: ok")
    return 0


def report_progress(copied, total):
    print(f"\rcopied {copied}/{total} pages ({100 * copied // max(total, 1)}%)",
          end="" if copied < total else "\n", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
