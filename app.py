"""The application: create_app, the one error handler
(RFC 9457 problem JSON), the request and response classes, and the WSGI
middleware every response passes through. What someone embedding the
service imports.

Not here: the settings and their types (settings.py), serving it
(server.py: waitress, workers, the command line) or the tables and storage
(models.py, storage/).
"""
import io
import logging
import random
import re
import time

import flask_smorest
import orjson
from flask import (Flask, Request as FlaskRequest, Response as FlaskResponse, current_app,
                   has_app_context, request)
from flask.json.provider import JSONProvider
from peewee import DatabaseError
from werkzeug.exceptions import InternalServerError, ServiceUnavailable
from werkzeug.utils import cached_property

import loglines
import metrics
import migrations
import models
import storage
from routes import BLUEPRINTS
from routes.access import protected, require_token
from routes.docs import HttpDocs, page as docs_page
from routes.metrics import blp as metrics_page
from routes.ui import blp as dashboard
from schemas import LogCreateSchema, ProblemSchema
from storage import db
from settings import DEFAULTS, coerce_settings, database_target
from storage.engines import ReadTimeout, open_database, unavailable, verify_wal
from storage.writes import WriterBusy

log = logging.getLogger("instance_api")
access_log = logging.getLogger("instance_api.access")

PROBLEM_TYPE = "about:blank"
# CONTRACT 4.7: a read stopped by the read time limit; not to be retried as it is.
QUERY_TIMEOUT_TYPE = "/api/problems/query-timeout"
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
    request): nothing here is async. Each app has its own `database`
    (create_app), several apps may live in one process."""

    request_class = Request
    response_class = Response
    database = None

    def ensure_sync(self, func):
        return func


def context_database():
    """The database of the app whose context is pushed, if any: what
    `storage.db` is outside a request (a background job, `with
    app.app_context()`); inside one, Traced has said already."""
    return current_app.database if has_app_context() else None


db.in_context = context_database


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


def problem(error, kind=PROBLEM_TYPE):
    """The problem+json response for an HTTPException (CONTRACT 1.5), of
    the problem type `kind`.

    Headers werkzeug sets on the error (such as Allow on a 405) are kept.
    webargs' abort() carries `message`, validation `messages` and `headers`.
    """
    data = getattr(error, "data", None) or {}
    body = {
        "type": kind,
        "title": error.name,
        "status": error.code,
        "detail": data.get("message") or DETAILS.get(error.code, describe)(error),
    }
    errors = data.get("errors") or data.get("messages")
    if errors:
        body["detail"] = "The request did not pass validation: " + ", ".join(
            f"{where}.{field}" for where, fields in errors.items() for field in fields) + "."
        body["errors"] = errors
    # Members a route adds to its problem (a 409 heartbeat's instance status).
    body.update(data.get("members") or {})
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
    reason = unavailable(exc)
    if reason is None:
        return handle_unexpected(exc)
    log.warning("Database unavailable for %s (request %s): %s",
                client_request(), request_id(), reason)
    busy = any(word in reason for word in ("lock", "busy", "serialize", "deadlock"))
    return problem(ServiceUnavailable(
        description=f"The database cannot take this request now ({reason}); "
                    "nothing was written. Retry later.",
        retry_after=1 if busy else 30))


def client_request():
    """The request's method and path for a log line, escaped: a host's own
    log handlers (an embedding app) may write them as they are."""
    return loglines.escape(f"{request.method} {request.path}")


def handle_read_timeout(exc):
    """503 without Retry-After for a read stopped by the read time limit:
    the same read would be stopped again, so the client narrows it."""
    log.warning("Read stopped after %g s (INSTANCES_QUERY_TIMEOUT) for %s %s (request %s)",
                exc.seconds, request.method, request.path, request_id())
    return problem(ServiceUnavailable(description=(
        f"The read took longer than the limit of {exc.seconds:g} s and was stopped; "
        "nothing was changed. Narrow it: add a filter (site_id, user_id, status, label, "
        "a q of 3 characters or more), ask for a smaller offset, or page with the next "
        "link (or `after` for logs) instead of a large offset.")), QUERY_TIMEOUT_TYPE)


def handle_unexpected(exc):
    """A fault no handler expected: full trace in the log, nothing to the client."""
    log.exception("Unhandled error in %s (request %s)", client_request(), request_id())
    return problem(InternalServerError(
        description="An unexpected error occurred; it was logged with this request_id."))


def configured_app(config=None, environment=True):
    """An App with its settings: defaults, then INSTANCES_* variables (when
    `environment`), then `config`; no database, no routes yet."""
    app = App(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(DEFAULTS)
    if environment:
        app.config.from_prefixed_env("INSTANCES")
    app.config.update(config or {})
    coerce_settings(app.config)
    return app


def register_api(app):
    """The API's routes and their OpenAPI document, on `app`."""
    api = Api(app, spec_kwargs={"extra_plugins": [
        HttpDocs({"Problem": ProblemSchema, "LogCreate": LogCreateSchema})]})
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    return api


def openapi_document():
    """The OpenAPI document GET /api/openapi.json serves, built from the
    routes and the default settings alone: no database is opened and no
    INSTANCES_* variable is read (the document does not depend on them)."""
    return register_api(configured_app(environment=False)).spec.to_dict()


def create_app(config=None):
    """Build the app: defaults, then INSTANCES_* variables, then `config`."""
    app = configured_app(config)

    # The app's own database: `storage.db` is this one in the app's context,
    # and outside any app's context too until another app is made (the
    # command-line tools, the server's own threads).
    app.database = open_database(
        database_target(app.config), busy_timeout=app.config["BUSY_TIMEOUT"],
        synchronous=app.config["SYNCHRONOUS"])
    db.initialize(app.database)
    with app.app_context():
        migrations.create_tables()
        verify_wal()
        models.follow_logs(app.config["MAX_WAITS"])
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
        db.release()

    register_api(app)
    # Pages for browsers, not API: registered beside the Api, so they stay out
    # of the OpenAPI document.
    app.register_blueprint(docs_page)
    app.register_blueprint(dashboard)
    if app.config["METRICS"]:
        metrics.setup()
        app.register_blueprint(metrics_page)
    app.register_error_handler(Exception, handle_unexpected)
    app.register_error_handler(DatabaseError, handle_database_error)
    app.register_error_handler(WriterBusy, handle_database_error)
    app.register_error_handler(ReadTimeout, handle_read_timeout)
    app.wsgi_app = Traced(app.wsgi_app, app.database,
                          metrics.record if app.config["METRICS"] else None)
    return app


class Traced:
    """WSGI middleware for what every response carries: the request id
    (X-Request-ID, the one sent when it is sane, else a new one), nosniff,
    and its access log line; and, for the length of the request, the app's
    database as the one `storage.db` stands for (storage.AppDatabase).

    Done on the WSGI call rather than in Flask's request hooks (request
    proxies, Headers, g), which cost about 20 of the 120 µs of a GET by id
    in-process, and under load a request's Python time is several times
    its in-process time (bench/README.md "Where the time goes")."""

    def __init__(self, wsgi_app, database, record=None):
        self.wsgi_app, self.database = wsgi_app, database
        # metrics.record(environ, status, started), or None: no metrics.
        self.record = record

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        # 128 random bits from the random module, not uuid4: that reads the
        # OS's random source, a system call per request where only
        # uniqueness is needed. random reseeds in each forked worker.
        request_id = environ[REQUEST_ID] = (sent if SANE_REQUEST_ID.fullmatch(sent)
                                            else f"{random.getrandbits(128):032x}")
        record = self.record

        def start(status, headers, exc_info=None):
            if status.startswith("204"):
                # smorest labels a 204 as JSON; a response without a body has no type.
                headers = [(name, value) for name, value in headers
                           if name.lower() != "content-type"]
            # Browsers must not guess a type other than the one declared.
            headers += [("X-Request-ID", request_id), ("X-Content-Type-Options", "nosniff")]
            if record is not None:
                record(environ, status, started)
            if access_log.isEnabledFor(logging.INFO):
                query = environ.get("QUERY_STRING")
                path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
                # The method, path and query are the client's: escaped
                # (loglines.escape), one request stays one line.
                line = loglines.escape(
                    f"{environ['REQUEST_METHOD']} {f'{path}?{query}' if query else path} "
                    f"{status[:3]} {(time.perf_counter() - started) * 1000:.1f}ms "
                    f"request_id={request_id}")
                if loglines.access_lines is None:
                    access_log.info("%s", line)
                else:
                    loglines.access_lines.line(access_log.name, line)
            return start_response(status, headers, exc_info)

        # Set once here, read by every query of the request: cheaper than
        # finding the app from Flask's context at each use.
        token = storage.current.set(self.database)
        try:
            return self.wsgi_app(environ, start)
        finally:
            storage.current.reset(token)


REQUEST_ID = "instance_api.request_id"


def request_id():
    return request.environ.get(REQUEST_ID)
