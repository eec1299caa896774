"""`instance-api tail INSTANCE_ID`: an instance's log in a terminal, like
`tail -f`: its last lines, then each new log as it is committed.

A thin command over the project's client: Client.tail (instance_api_client)
asks for the logs after the last one it yielded with `wait` (CONTRACT 3.3),
so each log prints the moment it lands, once, in commit order; it keeps
following through a server restart (connection refused, 503) and the command
stops when the instance is deleted. The client is imported when the command
runs: the server's processes, which import this module, need none of it.

Not here: serving (server.py), the waiting itself (routes/logs.py), or the
following (instance_api_client/client.py).
"""
import argparse
import json
import os
import sys
import unicodedata
from urllib.parse import urlsplit

LEVELS = ("debug", "info", "warn", "error", "fatal")
# Seconds each request waits for a new log: below the server's idle
# connection timeout (INSTANCES_CHANNEL_TIMEOUT, 30 s by default).
WAIT = 25
PAGE = 1000


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


def follow(client, instance_id, min_level, lines, out):
    """Print the last `lines` logs, then every later one as it comes; one
    line on standard error when the server goes away, one when it is back."""
    def failed(reason, failures):
        if failures == 0:
            print(f"instance-api tail: {reason}; trying again", file=sys.stderr, flush=True)

    def resumed():
        print("instance-api tail: following again", file=sys.stderr, flush=True)

    filters = {"min_level": min_level} if min_level else {}
    for log in client.tail(instance_id, last=lines, wait=WAIT, on_error=failed,
                           on_resume=resumed, **filters):
        out.write(line_of(log) + "\n")
        out.flush()


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
    from instance_api_client import ApiError, Client

    client = Client(args.url, args.token, timeout=10)
    try:
        follow(client, args.instance_id, args.min_level, args.lines, sys.stdout)
    except ApiError as exc:
        print(f"instance-api tail: {exc.status}: {exc.detail or exc.title}", file=sys.stderr)
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
