"""Serving: the `instance-api` command line (COMMANDS: serve, openapi, backup, tail, purge, mcp),
waitress with its framing checks, draining on SIGTERM, and WAL checkpoints.

Not here: the application itself (app.py), the worker processes
(workers.py) or how log lines are written (loglines.py).
"""
import argparse
import ipaddress
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time

import orjson
import waitress
from peewee import DatabaseError
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask

import logtail
import metrics
from app import PROBLEM_TYPE, create_app, openapi_document
from jobs.event_purge import EventPurge
from jobs.purge import Purge, purge_command
from jobs.reaper import Reaper
from jobs.runner import Runner
from loglines import configure_logging
from settings import DEFAULTS, shown_database
from storage import db
from storage.backup import BackupFailed
from storage.backup import backup as backup_file
from webhooks.delivery import Delivery
from workers import JOBS, SERVE, STARTUP_ERRORS, bind, prefork, worker_count

log = logging.getLogger("instance_api")


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
        prog="instance-api", usage="instance-api [COMMAND] [ARGS]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The Instance Management API and its tools.\n\ncommands:\n" + "".join(
            f"  {name + ' ' + args:<24}{summary}\n"
            for name, (args, summary, _) in COMMANDS.items()),
        epilog="The options are serve's; they override the INSTANCES_* environment\n"
               "variables. `instance-api [options]` serves too. `instance-api COMMAND\n"
               "--help` describes a command.")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one "
                                                 "(default 8080)")
    parser.add_argument("--threads", type=int, help="worker threads per process (default 8)")
    parser.add_argument("--workers", type=int,
                        help="server processes sharing the port (default 0: one per CPU, "
                             "at most 8; 1 serves in this process alone)")
    parser.add_argument("--db", dest="database", help="SQLite file (default instances.db)")
    parser.add_argument("--database-url", help="sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DB (wins over --db)")
    parser.add_argument("--allow-open-network", action="store_true", default=None,
                        help="serve on a non-loopback address without API tokens, "
                             "on purpose")
    args = parser.parse_args(argv)
    return {key.upper(): value for key, value in vars(args).items() if value is not None}


def main(argv=None):
    """`instance-api [COMMAND] [ARGS]`: the command's exit code. Without a
    command (or with flags first), serve."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][2](argv[1:])
    return serve(argv)


def mcp(argv):
    """`instance-api mcp`: imported when asked only (the SDK is an extra)."""
    from instance_api_client import mcp_server
    return mcp_server.main(argv)


def write_openapi(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api openapi",
        description="Write the OpenAPI document that GET /api/openapi.json serves. It is "
                    "built from the code alone: no database is opened and no INSTANCES_* "
                    "variable is read.")
    parser.add_argument("file", nargs="?", help="where to write it (default: standard output)")
    args = parser.parse_args(argv)
    try:
        text = json.dumps(openapi_document(), indent=2) + "\n"
        if args.file:
            with open(args.file, "w", encoding="utf-8") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except (OSError, ValueError, TypeError) as exc:
        print(f"Cannot write the OpenAPI document: {exc}", file=sys.stderr)
        return 1
    return 0


# How long a thread may hold the GIL while others wait (CPython's default is
# 5 ms). A writer holding the write lock must get the GIL back after each
# SQLite call; behind threads busy parsing and serializing, it waited up to
# 5 ms each time, and POSTs at 32 connections ran at half the rate of 8
# (bench/run.py: append_log 502 req/s at 5 ms, 761 at 0.5 ms; GETs and the
# bare-Flask ceiling unchanged).
SWITCH_INTERVAL = 0.0005


def serve(argv):
    """Serve the app with waitress until SIGTERM or Ctrl-C, then finish the
    requests in flight and exit 0. With several workers (the default: one
    per CPU, worker_count), they share one listening socket."""
    configure_logging()
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Before the app (which makes the metrics) and the workers: every
    # process of this server writes its metric files there (metrics.py).
    metrics_dir = metrics.multiprocess_dir()
    try:
        return serve_in(argv)
    finally:
        metrics.remove(metrics_dir)


def serve_in(argv):
    """serve, once the metrics directory is made."""
    try:
        app = create_app(parse_args(argv))
        cfg = app.config
        refuse_open_network(cfg)
        workers = worker_count(cfg["WORKERS"])
        if workers == 1:
            server = make_server(app, host=cfg["HOST"], port=cfg["PORT"])
        else:
            listener = bind(cfg["HOST"], cfg["PORT"])
    # A bad setting, a taken port, an unwritable file, a file from a newer server.
    except STARTUP_ERRORS as exc:
        log.error("Cannot start: %s", exc)
        return 2
    if workers == 1:
        announce(server.effective_host, server.effective_port, cfg,
                 f"1 process, {cfg['THREADS']} threads")
        return run(server, cfg, app)

    def make_worker(role):
        if role == JOBS:
            # It serves nothing: its copy of the socket would keep
            # connections queued at a stop, after the workers have closed theirs.
            listener.close()
            return lambda stopping: run_jobs(app, stopping)
        server = make_server(app, sockets=[listener])
        return lambda stopping: run(server, cfg, app, stopping, jobs=False)

    return prefork(listener, [SERVE] * workers + [JOBS], make_worker,
                   ready=lambda host, port: announce(
                       host, port, cfg, f"{workers} worker processes, {cfg['THREADS']} "
                                        "threads each, and one for the background jobs"))


def announce(host, port, cfg, processes):
    """The one start-up line, once the server is ready to answer."""
    log.info("Listening on http://%s:%s with database %s (%s)", host, port,
             shown_database(cfg), processes)


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


# How often the serving loop looks at whether it was told to stop: a
# SIGTERM answers the requests waiting for a log within about this long
# (CONTRACT 3.3: promptly), then the others finish (drain).
STOP_CHECK_INTERVAL = 0.2


# How long the requests in flight at a stop may take to finish. Waits for a
# log are answered at once (storage.tail), so only a slow write or a slow
# client takes this long; the parent of workers kills what is left after
# workers.STOP_TIMEOUT.
DRAIN_TIMEOUT = 8


def run(server, cfg, app, stopping=None, jobs=True):
    """The serving loop of one process, and with `jobs` the background jobs,
    until SIGTERM or SIGINT, or until `stopping` is set (a worker's, which
    its parent's handlers set)."""
    if stopping is None:
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: stopping.set())
    checkpoints = threading.Thread(target=checkpoint_every, daemon=True,
                                   args=(cfg["CHECKPOINT_INTERVAL"], stopping))
    checkpoints.start()
    # The background jobs of this process (after a fork: threads do not
    # survive one), stopped before the database closes.
    jobs = background(app if jobs else None).start()
    try:
        while not stopping.is_set():
            wasyncore.loop(timeout=STOP_CHECK_INTERVAL, map=server._map, use_poll=True,
                           count=1)
        # The jobs finish their current transaction meanwhile (stop, below).
        jobs.stopping.set()
        # Requests waiting for a log answer now with what they have, rather
        # than hold the drain until their deadline.
        waiting = db.tail.shutdown()
        log.info("Stopping: finishing the requests in flight (answering %d waiting for "
                 "a log)", waiting)
        drain(server, deadline=time.monotonic() + DRAIN_TIMEOUT)
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=1)
        jobs.stop(timeout=2)
        db.close_all()
    log.info("Stopped")
    return 0


def background(app):
    """The background jobs (jobs/) of `app`, none for None. A server of
    several workers runs them in a process of their own (run_jobs), once per
    host: webhook delivery in a serving process took its CPU and its GIL
    from the requests: with one webhook delivering every event, creates ran
    at 0.73 of their rate without it, and at 1.00 in the jobs worker
    (bench/README.md). One process runs them all."""
    if app is None:
        return Runner(None, [])
    cfg = app.config
    return Runner(app, [Reaper.from_config(cfg), Purge.from_config(cfg), EventPurge(app),
                        Delivery(app)])


def run_jobs(app, stopping):
    """The jobs worker of a server of several: the background jobs until
    `stopping` is set, then each finishes its current transaction."""
    jobs = background(app).start()
    try:
        while not stopping.wait(STOP_CHECK_INTERVAL):
            pass
    finally:
        jobs.stop(timeout=DRAIN_TIMEOUT)
        db.close_all()
    log.info("Stopped the background jobs")
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
            with db.connection_context():
                db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
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
        pages = backup_file(source, args.path, progress=report_progress)
    except (OSError, sqlite3.Error, BackupFailed) as exc:
        print(f"Backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"Backed up {os.path.abspath(source)} to {os.path.abspath(args.path)} "
          f"({pages} pages); integrity_check: ok")
    return 0


def report_progress(copied, total):
    print(f"\rcopied {copied}/{total} pages ({100 * copied // max(total, 1)}%)",
          end="" if copied < total else "\n", file=sys.stderr, flush=True)


# The commands: the arguments they take and the line `instance-api --help`
# gives each. `serve` is also what runs without a command.
COMMANDS = {
    "serve": ("[OPTIONS]", "serve the API (the default; options below)", serve),
    "openapi": ("[FILE]", "write the OpenAPI document (no database needed)", write_openapi),
    "backup": ("PATH", "copy the SQLite database while it is in use", backup),
    "tail": ("INSTANCE_ID", "follow an instance's log from a running server", logtail.main),
    "purge": ("[--dry-run]", "delete what the retention settings say, once", purge_command),
    "mcp": ("[OPTIONS]", "serve the API as MCP tools over stdio (--url URL; the mcp extra)", mcp),
}


if __name__ == "__main__":
    sys.exit(main())
