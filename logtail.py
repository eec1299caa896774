"""`instance-api tail INSTANCE_ID`: an instance's log in a terminal, like
`tail -f`: its last lines, then each new log as it is committed.

A client of a running server, with the standard library only: it asks for
the logs after the last one it printed with `wait` (CONTRACT 3.3), so each
request is answered the moment a log lands, and the server's cursor order
makes it print every log once. It keeps following through a server restart
(connection refused, 503) and stops when the instance is deleted.

Not here: serving (server.py) or the waiting itself (routes/logs.py).
"""
import argparse
import http.client
import json
import os
import sys
import time
import unicodedata
from urllib.parse import urlencode, urlsplit

LEVELS = ("debug", "info", "warn", "error", "fatal")
# Seconds each request waits for a new log: below the server's idle
# connection timeout (INSTANCES_CHANNEL_TIMEOUT, 30 s by default).
WAIT = 25
PAGE = 1000
# While the instance has no log there is no cursor to wait after: ask again
# this often. Between failures, wait this long, doubling up to the last.
FIRST_LOG_POLL = 1.0
RETRY = (0.5, 1, 2, 5)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api tail",
        description="Print an instance's last logs, then each new one as it is committed, "
                    "until interrupted (Ctrl-C) or the instance is deleted.")
    parser.add_argument("instance_id", help="the instance whose log to follow")
    parser.add_argument("--url", default=os.environ.get("INSTANCES_URL", "http://127.0.0.1:8080"),
                        help="the server (default $INSTANCES_URL or http://127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("INSTANCES_API_TOKEN"),
                        help="an API token, if the server needs one (default "
                             "$INSTANCES_API_TOKEN; the environment keeps it out of `ps`)")
    parser.add_argument("--min-level", choices=LEVELS,
                        help="only logs of this level or more severe")
    parser.add_argument("-n", "--lines", type=int, default=10,
                        help="how many of the last logs to print first (default 10)")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--url {args.url}: give http://HOST:PORT or https://HOST:PORT")
    if not 0 <= args.lines <= PAGE:
        parser.error(f"--lines must be 0 to {PAGE}")
    return args


class Stop(Exception):
    """The server refused in a way retrying cannot mend (exit status 1)."""


class Client:
    """One keep-alive connection to the server, opened again when it drops."""

    def __init__(self, url, token):
        parts = urlsplit(url)
        kind = (http.client.HTTPSConnection if parts.scheme == "https"
                else http.client.HTTPConnection)
        self.connect = lambda: kind(parts.hostname, parts.port, timeout=WAIT + 10)
        self.prefix = parts.path.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.conn = None

    def get(self, path, query):
        """(status, parsed JSON body) of GET path?query. Connection errors
        raise OSError or http.client.HTTPException."""
        if self.conn is None:
            self.conn = self.connect()
        try:
            self.conn.request("GET", f"{self.prefix}{path}?{urlencode(query)}",
                              headers=self.headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if resp.will_close:
            self.close()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def follow(client, instance_id, min_level, lines, out):
    """Print the last `lines` logs, then every later one as it comes."""
    path = f"/api/instances/{instance_id}/logs"
    filters = {"min_level": min_level} if min_level else {}
    retries = Retries()
    cursor = shown = None
    while True:
        if cursor is None:
            # Newest first: the last `lines`, and the newest as the cursor.
            status, body = retries.call(client.get, path, {**filters, "limit": max(lines, 1)})
        else:
            status, body = retries.call(client.get, path, {
                **filters, "after": cursor, "wait": WAIT, "limit": PAGE})
        if status == 200:
            retries.succeeded()
            if cursor is None:
                if not body:
                    time.sleep(FIRST_LOG_POLL)
                    continue
                cursor = body[0]["id"]
                # The cursor follows commit order and this page the time
                # logs were stamped: a log of this page may come again.
                shown = {log["id"] for log in body}
                logs = list(reversed(body))[-lines:] if lines else []
            else:
                logs = [log for log in body if log["id"] not in shown]
                if body:
                    cursor = body[-1]["id"]
            for log in logs:
                out.write(line_of(log) + "\n")
            out.flush()
        elif status in (502, 503, 504):
            retries.failed(f"the server answered {status}: {detail(body)}")
        else:
            raise Stop(f"{status}: {detail(body)}")


class Retries:
    """Backing off while the server is away, with one line to say so."""

    def __init__(self):
        self.failures = 0

    def call(self, get, *args):
        while True:
            try:
                return get(*args)
            except (OSError, http.client.HTTPException) as exc:
                self.failed(f"cannot reach the server: {exc or type(exc).__name__}")

    def failed(self, reason):
        if self.failures == 0:
            print(f"instance-api tail: {reason}; trying again", file=sys.stderr, flush=True)
        time.sleep(RETRY[min(self.failures, len(RETRY) - 1)])
        self.failures += 1

    def succeeded(self):
        if self.failures:
            print("instance-api tail: following again", file=sys.stderr, flush=True)
        self.failures = 0


def detail(body):
    if isinstance(body, dict):
        return body.get("detail") or body.get("title") or "no detail"
    return "no detail"


def line_of(log):
    """created_at LEVEL log_type: message {details}, every control character
    escaped: a stored message must not move the cursor, recolour the
    terminal or fake a line of its own."""
    text = f"{log['created_at']} {log['level'].upper():5} {log['log_type']}: {log['message']}"
    if log.get("details"):
        text += " " + json.dumps(log["details"], ensure_ascii=False, sort_keys=True)
    return "".join(visible(char) for char in text)


# Characters that reorder the text around them (right-to-left overrides
# and isolates): shown, they could make a line read as something else.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")


def visible(char):
    if char in BIDI_CONTROLS or (unicodedata.category(char) in ("Cc", "Zl", "Zp")
                                 and char != "\t"):
        return repr(char)[1:-1] if char.isascii() else f"\\u{ord(char):04x}"
    return char


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    client = Client(args.url, args.token)
    try:
        follow(client, args.instance_id, args.min_level, args.lines, sys.stdout)
    except Stop as exc:
        print(f"instance-api tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:     # `instance-api tail ID | head`: the reader is gone
        # Python would flush stdout again at exit, and fail the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
