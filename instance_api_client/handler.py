"""InstanceLogHandler: Python `logging` records as an instance's logs.

The caller's side (emit) only turns the record into a log entry and puts it
in a bounded queue without waiting: it never blocks on the network and never
raises. One daemon thread takes what is queued, as many as are waiting (up to
a batch), and sends them with the batch endpoint (POST an array to
/api/instances/{id}/logs), with the client's retries: each batch carries one
Idempotency-Key on all its tries, so a retried batch is stored once. Records
are sent in the order they were queued, so each thread's logs arrive in its
order.

What cannot be sent is counted in `dropped` (a full queue, a batch refused
or still failing after the retries) and reported once through
`logging.lastResort` (standard error unless configured otherwise), with a
last count at close: never silently. At interpreter exit the queue is
flushed (atexit, bounded by `exit_timeout`).

Not here: the HTTP calls (client.py, transport.py).
"""
import atexit
import json
import logging
import math
import queue
import re
import threading
import time
import traceback
from urllib.parse import quote

from .transport import ApiError

LEVELS = ((logging.CRITICAL, "fatal"), (logging.ERROR, "error"), (logging.WARNING, "warn"),
          (logging.INFO, "info"))
MAX_MESSAGE = 65536
MAX_BATCH = 1000
# Attributes every LogRecord has: what is left are the caller's `extra`.
STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
NOT_SLUG = re.compile(r"[^a-z0-9_.-]")
SLUG = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def level_of(levelno):
    for threshold, name in LEVELS:
        if levelno >= threshold:
            return name
    return "debug"


def slug_of(name):
    """A logger name as a log_type (CONTRACT 1.2): lower case, anything
    else as `_`, starting with a letter, at most 64 characters."""
    text = NOT_SLUG.sub("_", name.lower()).lstrip("0123456789_.-")[:64]
    return text if SLUG.match(text) else "log"


def json_safe(value, depth=0):
    """`value` as JSON the server accepts: containers walked, keys as text,
    NaN and infinities and anything else (objects, bytes) as their repr."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < 20:
        if isinstance(value, dict):
            return {str(key): json_safe(inner, depth + 1) for key, inner in value.items()}
        if isinstance(value, (list, tuple)):
            return [json_safe(inner, depth + 1) for inner in value]
    return repr(value)


class InstanceLogHandler(logging.Handler):
    """Send log records to `instance_id`'s log through `client`.

    `capacity`: records queued at most (more are dropped and counted);
    `batch_size`: records per request (1..1000); `batch_bytes`: a request's
    body at most (below the server's 1 MiB body limit); `log_type`: one
    log_type for every record instead of the logger's name;
    `heartbeat_interval`: seconds between heartbeats (POST .../heartbeat,
    CONTRACT 4.1) from the same thread, None for none; `exit_timeout`:
    seconds the exit flush may take."""

    def __init__(self, client, instance_id, level=logging.NOTSET, *, capacity=10000,
                 batch_size=MAX_BATCH, batch_bytes=512 * 1024, log_type=None,
                 heartbeat_interval=None, exit_timeout=5.0):
        super().__init__(level)
        self.client = client
        self.instance_id = instance_id
        self._path = f"/api/instances/{quote(str(instance_id), safe='')}/logs"
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.batch_bytes = batch_bytes
        self.log_type = log_type
        self.heartbeat_interval = heartbeat_interval
        self.exit_timeout = exit_timeout
        self.dropped = 0
        self.sent = 0
        self._slugs = {}
        self._queue = queue.Queue(capacity)
        self._queued = 0            # records put in the queue, ever
        self._done = 0              # of those, sent or dropped
        self._progress = threading.Condition()
        self._reported = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="InstanceLogHandler",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # The caller's side ---------------------------------------------------

    def emit(self, record):
        # The sending thread's own records (httpx logs each request) would
        # come back here forever.
        if record.thread == self._thread.ident or self._closing.is_set():
            return
        try:
            entry = self.entry(record)
        except Exception:
            self._drop(1, "a record could not be turned into a log")
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop(1, f"the queue was full ({self._queue.maxsize} records)")
            return
        with self._progress:
            self._queued += 1

    def entry(self, record):
        """The log entry (a LogEntry dict) for a record."""
        if self.formatter is not None:
            message = self.format(record)
        else:
            message = record.getMessage()
        if not message:
            message = "(empty message)"
        elif len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE - 1] + "…"
        details = {"logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            details["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            details["exception"] = record.exc_text
        if record.stack_info:
            details["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in STANDARD and not key.startswith("_"):
                details[key] = json_safe(value)
        log_type = self.log_type
        if log_type is None:
            log_type = self._slugs.get(record.name)
            if log_type is None:
                log_type = self._slugs[record.name] = slug_of(record.name)
        return {"log_type": log_type, "level": level_of(record.levelno), "message": message,
                "details": details}

    def _drop(self, count, reason):
        """Count `count` records lost; the first loss is reported."""
        with self._progress:
            self.dropped += count
            first = not self._reported
            self._reported = True
        if first:
            self._report(f"InstanceLogHandler: {count} log record(s) for instance "
                         f"{self.instance_id} could not be sent: {reason}. Later losses are "
                         f"counted in handler.dropped and reported at close.")

    @staticmethod
    def _report(text):
        record = logging.LogRecord("instance_api_client", logging.WARNING, __file__, 0, text,
                                   None, None)
        handler = logging.lastResort
        if handler is not None:
            handler.handle(record)

    # Flushing and closing --------------------------------------------------

    def flush(self, timeout=None):
        """Wait until every record queued before this call is sent or
        dropped, at most `timeout` seconds (None: as long as it takes).
        True when it is all done."""
        if threading.get_ident() == self._thread.ident:
            return False
        with self._progress:
            target = self._queued
            return self._progress.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout=None):
        """Flush (at most `timeout` seconds, `exit_timeout` when None), stop
        the thread, and report the count of records dropped. The client
        stays open (it is the caller's)."""
        if not self._closing.is_set():
            timeout = self.exit_timeout if timeout is None else timeout
            self.flush(timeout)
            self._closing.set()
            self._thread.join(timeout)
            atexit.unregister(self._at_exit)
            # What the flush could not send in time is lost: counted too.
            left = 0
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                left += 1
            if left:
                self._finish(left, "still queued when the handler was closed")
            if self.dropped and self._reported:
                self._report(f"InstanceLogHandler: {self.dropped} log record(s) for instance "
                             f"{self.instance_id} were dropped in all.")
        super().close()

    def _at_exit(self):
        self.close(self.exit_timeout)

    # The sending thread ------------------------------------------------------

    def _run(self):
        next_beat = (time.monotonic() + self.heartbeat_interval
                     if self.heartbeat_interval else None)
        while not self._closing.is_set():
            wait = 0.2 if next_beat is None else max(0.0, min(0.2, next_beat - time.monotonic()))
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                first = None
            if first is not None:
                batch = [first]
                while len(batch) < self.batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    parts = list(self._by_size(batch))
                except Exception as exc:    # never let the thread die: count and go on
                    self._finish(len(batch), f"{type(exc).__name__}: {exc}")
                    parts = []
                for part in parts:
                    self._send(part)
            if next_beat is not None and time.monotonic() >= next_beat:
                next_beat = self._heartbeat()

    def _by_size(self, batch):
        """The batch as JSON, each entry encoded once, cut into bodies of at
        most `batch_bytes`: lists of encoded entries."""
        part, size = [], 2
        for entry in batch:
            try:
                encoded = json.dumps(entry, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                # Text with lone surrogates is not UTF-8: sent with them replaced.
                encoded = json.dumps(entry, ensure_ascii=False).encode("utf-8", "replace")
            if part and size + len(encoded) + 1 > self.batch_bytes:
                yield part
                part, size = [], 2
            part.append(encoded)
            size += len(encoded) + 1
        if part:
            yield part

    def _send(self, batch):
        """POST one batch (encoded entries): on 413 (a body past the
        server's limit) in halves, on 422 without the entries it names; what
        cannot go is dropped."""
        try:
            self.client.transport.send("POST", self._path, content=b"[" + b",".join(batch) + b"]",
                                       headers={"Content-Type": "application/json"})
        except ApiError as exc:
            if exc.status == 413 and len(batch) > 1:
                half = len(batch) // 2
                self._send(batch[:half])
                self._send(batch[half:])
                return
            bad = bad_entries(exc, len(batch))
            if exc.status == 422 and bad and len(bad) < len(batch):
                self._finish(len(bad), f"{exc.status} {exc}")
                self._send([entry for index, entry in enumerate(batch) if index not in bad])
                return
            self._finish(len(batch), str(exc).splitlines()[0])
            return
        except Exception as exc:    # never let the thread die: count and go on
            self._finish(len(batch), f"{type(exc).__name__}: {exc}")
            return
        with self._progress:
            self.sent += len(batch)
        self._finish(0, None, len(batch))

    def _finish(self, dropped, reason, sent=0):
        if dropped:
            self._drop(dropped, reason)
        with self._progress:
            self._done += dropped + sent
            self._progress.notify_all()

    def _heartbeat(self):
        """One heartbeat; the time of the next, or None to stop (the
        instance has ended or is gone: beating on would do nothing)."""
        try:
            self.client.heartbeat(self.instance_id)
        except ApiError as exc:
            if exc.status in (404, 409):
                self._report(f"InstanceLogHandler: heartbeats for instance {self.instance_id} "
                             f"stopped: {str(exc).splitlines()[0]}")
                return None
        except Exception:   # the thread must live on; the next beat tries again
            pass
        return time.monotonic() + self.heartbeat_interval


def bad_entries(error, count):
    """The indexes of a batch's entries a 422 names (CONTRACT 2.4)."""
    named = error.errors.get("json") if isinstance(error.errors, dict) else None
    if not isinstance(named, dict):
        return set()
    return {int(key) for key in named if str(key).isdigit() and int(key) < count}
