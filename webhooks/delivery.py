"""Webhook delivery, a background job (jobs/runner.py) that every server
runs (in its jobs worker, when it has several: server.py), every
INSTANCES_WEBHOOK_POLL_INTERVAL seconds (default 1).

Each pass looks for active webhooks that are behind the event feed and
due (no retry pending, or its time has come), and takes the lease of each
with a conditional UPDATE (`lease_owner`, `lease_until`): only one process
of any host delivers to a webhook at a time, and a lease not renewed
lapses within LEASE seconds (30), so a dead process's webhooks are taken
over. Each leased webhook is served by a thread of its own: a slow or dead
receiver holds up its own webhook only, and never a request thread.

Serving a webhook: its events after its position, in feed order (a later
event waits for an earlier one), read BATCH at a time, each POSTed with
the Standard Webhooks headers (signing.py), signed at the time of each
attempt, over one kept-alive connection per thread (urllib3: a request
costs the process a third of what httpx's did, measured). A 2xx is
delivered; anything else (a 3xx too: redirects are not followed) is a failure: the
next attempt is due after RETRY_BASE seconds (1), doubling up to an hour;
after GIVE_UP (24 hours) of failures the event is given up (`failed`
counts it) and the next one is tried. The position moves past delivered
events in one write per batch (at least every FLUSH seconds), which also
renews the lease: a webhook's deliveries cost the database a write per
batch, not two per event, so a receiver keeps up with a fleet's writes.
Every write is conditional on holding the lease, and the state is in the
database: a restart loses nothing (events delivered but not yet recorded
are sent again: at least once). On shutdown an attempt in flight is
abandoned without counting as a failure. A thread with nothing to send
waits IDLE seconds for new events before it gives its lease back.

Each attempt's outcome is counted in /metrics (metrics.delivered).
"""
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import orjson
import urllib3

import metrics
from feed_reads import EVENTS, Query
from fleet_schemas import EventSchema
from storage import db
from storage.fields import utcnow
from webhooks import signing
from webhooks.store import Webhook
from webhooks.targets import Refused, checked_address, parse_allow, resolve

log = logging.getLogger("instance_api")

LEASE = timedelta(seconds=30)
MAX_DELAY = 3600.0
TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)
BATCH = 100         # events read per query
FLUSH = 1.0         # seconds at most between writes of the position
IDLE = 1.0          # seconds a thread waits for new events before it gives the lease back
IDLE_POLL = 0.05


class Delivery:
    name = "webhook-delivery"

    def __init__(self, app, resolver=resolve):
        cfg = app.config
        self.interval = cfg["WEBHOOK_POLL_INTERVAL"]
        self.retry_base = cfg["WEBHOOK_RETRY_BASE"]
        self.give_up = cfg["WEBHOOK_GIVE_UP"]
        self.allow = parse_allow(cfg["WEBHOOK_ALLOW"])
        self.app, self.resolver = app, resolver
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.serving = {}     # webhook id: its thread
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.schema = EventSchema()

    # -- the pass --------------------------------------------------------------

    def run_once(self):
        """Lease the webhooks that are due and start a thread for each."""
        now = utcnow()
        for webhook in Webhook.select().where(
                Webhook.active,
                (Webhook.next_attempt_at.is_null()) | (Webhook.next_attempt_at <= now),
                (Webhook.lease_until.is_null()) | (Webhook.lease_until < now)):
            with self.lock:
                if self.stopping.is_set() or webhook.id in self.serving:
                    continue
            if not Query(EVENTS, webhook.filters()).count_after(webhook.position, 1):
                continue
            if not self.lease(webhook.id, now):
                continue
            thread = threading.Thread(target=self.serve, args=(webhook.id,),
                                      name=f"webhook-{webhook.id}", daemon=True)
            with self.lock:
                self.serving[webhook.id] = thread
            thread.start()

    def lease(self, webhook_id, now):
        """Take (or renew) the lease of a webhook: true when this process has it."""
        taken = Webhook.update(lease_owner=self.owner, lease_until=now + LEASE).where(
            Webhook.id == webhook_id,
            (Webhook.lease_until.is_null()) | (Webhook.lease_until < now)
            | (Webhook.lease_owner == self.owner)).execute()
        return taken == 1

    def release(self, webhook_id):
        Webhook.update(lease_owner=None, lease_until=None).where(
            Webhook.id == webhook_id, Webhook.lease_owner == self.owner).execute()

    def stop(self):
        """Shutdown: attempts in flight are abandoned; leases given back."""
        self.stopping.set()
        try:
            with self.app.app_context(), db.connection_context():
                Webhook.update(lease_owner=None, lease_until=None).where(
                    Webhook.lease_owner == self.owner).execute()
        except Exception:   # noqa: BLE001 -- the lease lapses by itself anyway
            log.warning("Could not give back the webhook leases; they lapse in %s", LEASE)

    # -- one webhook -------------------------------------------------------------

    def serve(self, webhook_id):
        try:
            with self.app.app_context():
                try:
                    pools = {}
                    try:
                        self.deliver(webhook_id, pools)
                    finally:
                        for pool in pools.values():
                            pool.close()
                finally:
                    if not self.stopping.is_set():
                        self.release(webhook_id)
                    # The thread ends: its SQLite connection is closed (kept,
                    # it would stay open for good), a pooled one given back.
                    db.close()
        except Exception:
            log.exception("Webhook %s: delivery failed; tried again at the next pass",
                          webhook_id)
        finally:
            with self.lock:
                self.serving.pop(webhook_id, None)

    def deliver(self, webhook_id, pools):
        """Deliver the webhook's events batch after batch, while it has any
        (or gets one within IDLE seconds), its lease holds and no attempt
        failed."""
        idle_until = time.monotonic() + IDLE
        while not self.stopping.is_set():
            now = utcnow()
            webhook = Webhook.get_or_none(Webhook.id == webhook_id)
            if webhook is None or not webhook.active or webhook.lease_owner != self.owner:
                return
            if webhook.next_attempt_at is not None and webhook.next_attempt_at > now:
                return
            if not self.lease(webhook_id, now):
                return
            events = Query(EVENTS, webhook.filters()).after(webhook.position, BATCH)
            db.release()   # no connection held while the receiver answers
            if not events:
                if time.monotonic() >= idle_until:
                    return
                self.stopping.wait(IDLE_POLL)
                continue
            if not Sending(self, webhook, pools).send(events):
                return
            idle_until = time.monotonic() + IDLE


class Sending:
    """One batch of a webhook's events, sent in order by one thread.

    The outcomes are written together (`flush`): the position after the
    last event delivered, with the lease renewed, at the end of the batch,
    before a failure is recorded, and at least every FLUSH seconds; a
    process that dies in between sends those events again after the
    lease lapses (at least once, as promised)."""

    def __init__(self, delivery, webhook, pools):
        self.delivery, self.webhook, self.pools = delivery, webhook, pools
        self.delivered, self.last, self.status = 0, None, None
        self.flushed = time.monotonic()

    def send(self, events):
        """True when every event was handled (delivered or given up) and
        the lease is still this process's."""
        webhook, stopping = self.webhook, self.delivery.stopping
        try:
            target = Target(webhook.url, self.delivery.allow, self.delivery.resolver)
        except Refused as refused:
            target, refusal = None, refused.reason
        for event in events:
            if target is None:
                status, error = None, refusal
            else:
                status, error = target.post(self.pools, webhook.secrets(), event,
                                            self.delivery.schema)
            if stopping.is_set():
                break    # abandoned: not a failure, sent again after the restart
            if error is None:
                metrics.delivered("delivered")
                self.delivered, self.last, self.status = self.delivered + 1, event, status
                if time.monotonic() - self.flushed >= FLUSH and not self.flush():
                    return False
                continue
            if not self.flush() or not self.failed(event, status, error):
                return False
        return self.flush()

    def flush(self, **changes):
        """Write the position after the delivered events (and `changes`) if
        this process still holds the lease, renewing it; true if it did."""
        now = utcnow()
        if self.last is not None:
            position = self.last["position"]
            changes.update(xid=str(position.xid), seq=position.seq, attempts=0,
                           first_failure_at=None, next_attempt_at=None,
                           delivered=Webhook.delivered + self.delivered,
                           last_delivery_at=now, last_status=self.status, last_error=None)
        changes["lease_until"] = now + LEASE
        owner = self.delivery.owner
        kept = Webhook.update(**changes).where(Webhook.id == self.webhook.id,
                                               Webhook.lease_owner == owner).execute() == 1
        db.release()
        if kept and self.last is not None:
            self.webhook.attempts, self.webhook.first_failure_at = 0, None
        self.delivered, self.last, self.flushed = 0, None, time.monotonic()
        return kept

    def failed(self, event, status, error):
        """Record a failed attempt of `event`: its retry is scheduled (false:
        stop here), or after GIVE_UP it is given up (true: go on)."""
        now, webhook = utcnow(), self.webhook
        metrics.delivered("failed")
        changes = {"last_delivery_at": now, "last_status": status, "last_error": error}
        first = webhook.first_failure_at or now
        if now - first < self.delivery.give_up:
            delay = min(self.delivery.retry_base * 2 ** webhook.attempts, MAX_DELAY)
            self.flush(**changes, attempts=webhook.attempts + 1, first_failure_at=first,
                       next_attempt_at=now + timedelta(seconds=delay))
            return False
        metrics.delivered("given_up")
        position = event["position"]
        webhook.attempts, webhook.first_failure_at = 0, None
        return self.flush(**changes, failed=Webhook.failed + 1, xid=str(position.xid),
                          seq=position.seq, attempts=0, first_failure_at=None,
                          next_attempt_at=None)


class Target:
    """Where a webhook's events go: its URL with the host resolved and
    checked once per batch (targets.py), each request sent to that address
    so that what was checked is what is connected to (with the URL's host
    in `Host`, and for https in SNI and the certificate check)."""

    def __init__(self, url, allow, resolver):
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        self.address = checked_address(parts.hostname, port, allow, resolver)
        self.port, self.https, self.hostname = port, https, parts.hostname
        self.host = parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def pool(self, pools):
        """The thread's kept-alive connection to this target (`pools` is the
        thread's own: one connection each)."""
        key = (self.https, self.address, self.port, self.hostname)
        if key not in pools:
            kind, extra = urllib3.HTTPConnectionPool, {}
            if self.https:
                kind, extra = urllib3.HTTPSConnectionPool, {"server_hostname": self.hostname}
            pools[key] = kind(self.address, self.port, maxsize=1, retries=False,
                              timeout=TIMEOUT, **extra)
        return pools[key]

    def post(self, pools, secrets, event, schema):
        """POST the event: (HTTP status or None, None or the last_error word)."""
        body = orjson.dumps(schema.dump(event))
        headers = signing.headers(secrets, str(event["id"]), int(time.time()), body)
        headers["Host"] = self.host
        try:
            response = self.pool(pools).urlopen(
                "POST", self.path, body=body, headers=headers, redirect=False,
                retries=False, assert_same_host=False)
        except urllib3.exceptions.SSLError:
            return None, "tls"
        except urllib3.exceptions.NewConnectionError:
            return None, "refused"
        except urllib3.exceptions.TimeoutError:
            return None, "timeout"
        except (urllib3.exceptions.HTTPError, OSError):
            return None, "error"
        status = response.status
        if 200 <= status < 300:
            return status, None
        return status, f"http {status // 100}xx"
