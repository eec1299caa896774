"""Application factory, the one error handler, and the waitress entry point."""
import argparse
import json
import logging
import os
import re
import signal
import sys
import time
import uuid

import flask_smorest
import orjson
import waitress
from flask import Flask, current_app, g, request
from flask.json.provider import JSONProvider
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from werkzeug.exceptions import InternalServerError

import models
from routes import BLUEPRINTS
from routes.docs import HttpDocs, assets
from schemas import LogCreateSchema, ProblemSchema

log = logging.getLogger("instance_api")
access_log = logging.getLogger("instance_api.access")

DEFAULTS = {
    "DATABASE": "instances.db",
    "HOST": "127.0.0.1",
    "PORT": 8080,
    "THREADS": 8,
    "MAX_BODY_BYTES": 1 << 20,
    "BUSY_TIMEOUT": 5.0,
    "API_TITLE": "Instance Management API",
    "API_VERSION": "1.0.0",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "/api/docs/assets/",
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


class OrjsonProvider(JSONProvider):
    """Fast, strict JSON for responses; key order follows the schemas."""

    mimetype = "application/json"

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj).decode()

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
        body["request_id"] = g.get("request_id")
    response = error.get_response()
    # List and batch errors are keyed by position (int keys).
    response.set_data(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))
    response.mimetype = "application/problem+json"
    response.headers.update(data.get("headers") or {})
    return response


def describe(error):
    return error.description


def handle_unexpected(exc):
    """A fault no handler expected: full trace in the log, nothing to the client."""
    log.exception("Unhandled error in %s %s (request %s)",
                  request.method, request.path, g.get("request_id"))
    return problem(InternalServerError(
        description="An unexpected error occurred; it was logged with this request_id."))


# Environment values arrive as text (or whatever JSON they parse as), so each
# setting is brought to its type once, with an error that names the variable.
SETTING_TYPES = {"DATABASE": str, "HOST": str, "PORT": int, "THREADS": int,
                 "MAX_BODY_BYTES": int, "BUSY_TIMEOUT": float}


def coerce_settings(config):
    for key, kind in SETTING_TYPES.items():
        value = config[key]
        try:
            config[key] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"INSTANCES_{key} (or the {key} setting) is not a valid "
                             f"{kind.__name__}: {value!r}") from None
    config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]


def create_app(config=None):
    """Build the app: defaults, then INSTANCES_* variables, then `config`."""
    app = Flask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("INSTANCES")
    app.config.update(config or {})
    coerce_settings(app.config)

    models.db.initialize(models.open_sqlite(
        app.config["DATABASE"], busy_timeout=app.config["BUSY_TIMEOUT"]))
    models.create_tables()

    @app.before_request
    def tag_request():
        g.started = time.perf_counter()
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex

    @app.after_request
    def finish_response(response):
        # smorest labels a 204 as JSON; a response without a body has no type.
        if response.status_code == 204:
            response.headers.pop("Content-Type", None)
        response.headers["X-Request-ID"] = g.request_id
        access_log.info("%s %s %s %.1fms request_id=%s", request.method, request.full_path
                        if request.query_string else request.path, response.status_code,
                        (time.perf_counter() - g.started) * 1000, g.request_id)
        return response

    @app.teardown_request
    def release_connection(exc):
        # Runs after errors too, so a failed request still returns its
        # connection to the pool (rolled back if a transaction was open).
        if not models.db.is_closed():
            models.db.close()

    api = Api(app, spec_kwargs={"extra_plugins": [
        HttpDocs({"Problem": ProblemSchema, "LogCreate": LogCreateSchema})]})
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    app.register_blueprint(assets)
    app.register_error_handler(Exception, handle_unexpected)
    return app


class ProblemErrorTask(ErrorTask):
    """waitress answers some requests itself (a body past its own limit,
    malformed HTTP); those answers are problem JSON too (CONTRACT 1.5)."""

    def execute(self):
        error = self.request.error
        body = orjson.dumps({"type": PROBLEM_TYPE, "title": error.reason,
                             "status": error.code, "detail": f"{error.reason}: {error.body}."})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/problem+json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class ProblemChannel(HTTPChannel):
    error_task_class = ProblemErrorTask


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api",
        description="Serve the Instance Management API with waitress. Flags override "
                    "the INSTANCES_* environment variables.",
        epilog="`instance-api openapi [FILE]` writes the OpenAPI document instead.")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one "
                                                 "(default 8080)")
    parser.add_argument("--threads", type=int, help="worker threads (default 8)")
    parser.add_argument("--db", dest="database", help="SQLite file (default instances.db)")
    args = parser.parse_args(argv)
    return {key.upper(): value for key, value in vars(args).items() if value is not None}


def main(argv=None):
    """`instance-api [flags]` serves; `instance-api openapi [FILE]` writes the
    API's OpenAPI document."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["openapi"]:
        return write_openapi(argv[1:])
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


def serve(argv):
    """Serve the app with waitress until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(parse_args(argv))
        cfg = app.config
        server = waitress.create_server(
            app, host=cfg["HOST"], port=cfg["PORT"], threads=cfg["THREADS"],
            # A backstop only: Flask answers oversized bodies first, as problem JSON.
            max_request_body_size=cfg["MAX_CONTENT_LENGTH"] + (64 << 10),
            ident="instance-api",
        )
    # A bad setting, a taken port, an unwritable file, a file from a newer server.
    except (ValueError, OSError, models.SchemaTooNew) as exc:
        log.error("Cannot start: %s", exc)
        return 2
    server.channel_class = ProblemChannel
    log.info("Listening on http://%s:%s with database %s", server.effective_host,
             server.effective_port, os.path.abspath(cfg["DATABASE"]))

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)
        models.db.close_all()
    log.info("Stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
