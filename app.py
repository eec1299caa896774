"""Application factory, the one error handler, and the waitress entry point."""
import argparse
import logging
import os
import signal
import sys
import uuid

import flask_smorest
import orjson
import waitress
from flask import Flask, current_app, g, request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge

import models
from routes import BLUEPRINTS

log = logging.getLogger("instance_api")

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
}
PROBLEM_TYPE = "about:blank"


class OrjsonProvider(JSONProvider):
    """Fast, strict JSON for responses; key order follows the schemas."""

    mimetype = "application/json"

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)


class Api(flask_smorest.Api):
    """smorest's Api with every HTTP error rendered as RFC 9457 problem JSON."""

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
        "detail": data.get("message") or error.description,
    }
    errors = data.get("errors") or data.get("messages")
    if errors:
        body["detail"] = "The request did not pass validation: " + ", ".join(
            f"{where}.{field}" for where, fields in errors.items() for field in fields) + "."
        body["errors"] = errors
    if error.code >= 500:
        body["request_id"] = g.get("request_id")
    response = error.get_response()
    response.set_data(orjson.dumps(body))
    response.mimetype = "application/problem+json"
    response.headers.update(data.get("headers") or {})
    return response


def handle_unexpected(exc):
    """A fault no handler expected: full trace in the log, nothing to the client."""
    log.exception("Unhandled error in %s %s (request %s)",
                  request.method, request.path, g.get("request_id"))
    return problem(InternalServerError(
        description="An unexpected error occurred; it was logged with this request_id."))


def handle_too_large(error):
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return problem(RequestEntityTooLarge(f"The body is larger than the limit of {limit} bytes."))


def create_app(config=None):
    """Build the app: defaults, then INSTANCES_* variables, then `config`."""
    app = Flask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("INSTANCES")
    app.config.update(config or {})
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_BODY_BYTES"])

    models.db.initialize(models.open_sqlite(
        str(app.config["DATABASE"]), busy_timeout=float(app.config["BUSY_TIMEOUT"])))
    models.create_tables()

    @app.before_request
    def tag_request():
        g.request_id = uuid.uuid4().hex

    @app.teardown_request
    def release_connection(exc):
        # Runs after errors too, so a failed request still returns its
        # connection to the pool (rolled back if a transaction was open).
        if not models.db.is_closed():
            models.db.close()

    api = Api(app)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    app.register_error_handler(RequestEntityTooLarge, handle_too_large)
    app.register_error_handler(Exception, handle_unexpected)
    return app


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="instance-api", description=__doc__)
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one "
                                                 "(default 8080)")
    parser.add_argument("--threads", type=int, help="worker threads (default 8)")
    parser.add_argument("--db", dest="database", help="SQLite file (default instances.db)")
    args = parser.parse_args(argv)
    return {key.upper(): value for key, value in vars(args).items() if value is not None}


def main(argv=None):
    """Serve the app with waitress until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(parse_args(argv))
    cfg = app.config
    server = waitress.create_server(
        app, host=cfg["HOST"], port=int(cfg["PORT"]), threads=int(cfg["THREADS"]),
        # A backstop only: Flask answers oversized bodies first, as problem JSON.
        max_request_body_size=cfg["MAX_CONTENT_LENGTH"] + (64 << 10),
        ident="instance-api",
    )
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
