"""The fleet's feeds and webhooks in the benchmark (issue 24, item 6), run
when the server has them (`GET /api/logs` answers 200):

- `fleet_by_label` and `fleet_errors`: pages of 50 of every instance's logs
  (`GET /api/logs`) with a `label` filter and with `min_level=error`, per
  process at 8 and 32 connections; flat, large against small (>= 0.9);
- `webhook:create_instance`: create_instance on a server of the default
  worker count (its jobs worker delivering: server.py) on a copy of the
  dataset with one webhook that takes every event, delivered to a receiver
  in this process on 127.0.0.1 (`Receiver`), at 32 connections. The cell's
  rate counts the time until the receiver has every event of the
  instances created so far (a deliverer that falls behind does not count,
  and a backlog left by one cell counts against the next): created /
  (wrk's seconds + the wait for the last event). Against
  `default:create_instance`, the same server without a webhook, in the
  same rounds (>= 0.85 x); a cell whose events did not all arrive within
  CATCH_UP seconds is marked incomplete, and the target not met;
- the fleet tail's wake is in live_tail.py.
"""
import json
import shutil
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CATCH_UP = 30.0     # seconds a cell's events may take to arrive after it
# One concurrency, the default cells': a deliverer far behind costs CATCH_UP a cell.
CONCURRENCY = (32,)
OPS = ("fleet_by_label", "fleet_errors")


def targets(api):
    """Operation: (URL, wrk script, rows per request); a fifth of the
    instances have env=prod (seed.py); levels are spread evenly, so two in
    five logs are error or fatal."""
    return {
        "fleet_by_label": (f"{api}/api/logs?label=env%3Dprod&limit=50", None, 1),
        "fleet_errors": (f"{api}/api/logs?min_level=error&limit=50", None, 1),
    }


def has_feeds(api):
    try:
        with urllib.request.urlopen(f"{api}/api/logs?limit=1", timeout=30) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers 204 at once and counts the
    distinct events (by webhook-id) of each type it was sent."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Hook)
        self.seen, self.types = set(), {}
        self.expected = 0    # instance.created events the cells have caused
        self.changed = threading.Condition()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def got(self, event_id, kind):
        with self.changed:
            if event_id not in self.seen:
                self.seen.add(event_id)
                self.types[kind] = self.types.get(kind, 0) + 1
                self.changed.notify_all()

    def count(self, kind):
        with self.changed:
            return self.types.get(kind, 0)

    def wait_for(self, kind, total, timeout):
        """Seconds until `total` events of `kind` have arrived, or None."""
        started = time.monotonic()
        with self.changed:
            arrived = self.changed.wait_for(lambda: self.types.get(kind, 0) >= total, timeout)
        return time.monotonic() - started if arrived else None


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keeps the deliverer's connection open

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.got(self.headers.get("webhook-id"), json.loads(body).get("type"))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def webhook_server(start, pristine, threads):
    """(process, API URL, receiver): a server of the default worker count
    on a copy of the dataset, with one webhook for every event to a new
    receiver."""
    work = Path(pristine).resolve().with_name("webhook.db")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(pristine, work)
    proc, api = start([__import__("sys").executable, "server.py", "--port", "0", "--db",
                       str(work), "--threads", threads])
    receiver = Receiver()
    request = urllib.request.Request(
        f"{api}/api/webhooks", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"url": receiver.url, "description": "bench"}).encode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        if resp.status != 201:
            raise SystemExit(f"POST /api/webhooks answered {resp.status}")
    return proc, api, receiver


def webhook_cell(wrk, receiver, url, connections, seconds, script):
    """wrk's figures for create_instance, its rate over the time until
    every created instance's event has reached the receiver."""
    before = receiver.count("instance.created")
    result = wrk(url, connections, seconds, script)
    created = result["requests"] - result["non_2xx"]
    receiver.expected += created
    waited = receiver.wait_for("instance.created", receiver.expected, CATCH_UP)
    complete = waited is not None
    elapsed = result["requests"] / result["rps"] if result["rps"] else seconds
    total = elapsed + (waited if complete else CATCH_UP)
    return {**result, "rps": created / total, "wrk_rps": result["rps"],
            "catch_up_s": waited if complete else CATCH_UP, "complete": complete,
            "delivered": receiver.count("instance.created") - before, "created": created}
