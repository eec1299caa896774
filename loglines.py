"""Log lines: one per request from the access log, and the service's own,
written in batches by a thread of their own so that no request waits on a
write to stderr."""
import collections
import logging
import os
import re
import sys
import threading
import time

access_log = logging.getLogger("instance_api.access")

# What may not reach a log line as it is: C0 and C1 controls, DEL, and the
# two Unicode line separators. A decoded path with a newline in it (%0a)
# would otherwise start a second line that looks like the server's own (a
# forged access line), and ESC (%1b) would reach the terminal of whoever
# reads the log.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text):
    """`text` with each control character written as \\xNN (\\uNNNN for the
    line separators), so that it stays on its line. A text without one,
    nearly every request's, is only searched."""
    if CONTROL.search(text) is None:
        return text
    return CONTROL.sub(_escaped, text)


def _escaped(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class LineBatches(logging.Handler):
    """Log lines written to `stream` by a thread of its own, every `interval`
    seconds, all that came in meanwhile in one write; a warning or error at
    once, with those before it.

    Written as they come, each access line took the handler's lock and a
    system call that gives up the GIL, in the middle of its request: at 8
    connections a GET by id spent as much server CPU on its log line as on
    its query (bench/README.md "Where the time goes"). Here a request only formats
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

    def formatMessage(self, record):
        # Every message one line, whoever logged it and whatever it quotes
        # (a path, a header, a database's error text); a traceback, added
        # after the message, keeps its lines.
        record.message = escape(record.message)
        return super().formatMessage(record)

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
