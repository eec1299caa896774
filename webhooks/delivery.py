"""Webhook delivery, a background job (jobs/runner.py) that every process
runs, every INSTANCES_WEBHOOK_POLL_INTERVAL seconds (default 1).

Each pass looks for active webhooks that are behind the event feed and
due (no retry pending, or its time has come), and takes the lease of each
with a conditional UPDATE (`lease_owner`, `lease_until`): only one process
of any host delivers to a webhook at a time, and a lease not renewed
lapses within LEASE seconds (30), so a dead process's webhooks are taken
over. Each leased webhook is served by a thread of its own: a slow or dead
receiver holds up its own webhook only, and never a request thread.

Serving a webhook: its events after its position, in feed order (a later
event waits for an earlier one), each POSTed with the Standard Webhooks
headers (signing.py), signed at the time of each attempt. A 2xx is
delivered: the position moves past the event. Anything else (a 3xx too:
redirects are not followed) is a failure: the next attempt is due after
RETRY_BASE seconds (1), doubling up to an hour; after GIVE_UP (24 hours)
of failures the event is given up (`failed` counts it) and the next one
is tried. Every move is a write conditional on holding the lease, and the
state is in the database: a restart loses nothing. On shutdown an attempt
in flight is abandoned without counting as a failure.

Each attempt's outcome is counted in /metrics (metrics.delivered).
"""
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from datetime import timedelta

import httpx
import orjson

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
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 10.0


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
                    while not self.stopping.is_set() and self.step(webhook_id):
                        pass
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

    def step(self, webhook_id):
        """Try the webhook's next event once; true to go on at once."""
        now = utcnow()
        webhook = Webhook.get_or_none(Webhook.id == webhook_id)
        if webhook is None or not webhook.active or webhook.lease_owner != self.owner:
            return False
        if webhook.next_attempt_at is not None and webhook.next_attempt_at > now:
            return False
        rows = Query(EVENTS, webhook.filters()).after(webhook.position, 1)
        if not rows:
            return False
        if not self.lease(webhook_id, now):
            return False
        db.release()   # no connection held while the receiver answers
        event = rows[0]
        status, error = self.attempt(webhook, event)
        if self.stopping.is_set():
            return False    # abandoned: not a failure, tried again after the restart
        return self.record(webhook, event, status, error)

    def attempt(self, webhook, event):
        """POST the event: (HTTP status or None, None or the last_error word)."""
        body = orjson.dumps(self.schema.dump(event))
        url = httpx.URL(webhook.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            address = checked_address(url.host, port, self.allow, self.resolver)
        except Refused as refused:
            return None, refused.reason
        headers = signing.headers(webhook.secrets(), str(event["id"]), int(time.time()), body)
        headers["Host"] = url.netloc.decode("ascii")
        target = url.copy_with(host=address)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        try:
            with httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                              follow_redirects=False, trust_env=False) as client:
                response = client.post(target, content=body, headers=headers,
                                       extensions=extensions)
        except httpx.TimeoutException:
            return None, "timeout"
        except httpx.ConnectError as exc:
            return None, "tls" if isinstance(exc.__context__, ssl.SSLError) else "refused"
        except httpx.HTTPError:
            return None, "error"
        status = response.status_code
        if 200 <= status < 300:
            return status, None
        return status, f"http {status // 100}xx"

    def record(self, webhook, event, status, error):
        """Store the outcome, if this process still holds the lease; true
        when the next event may be tried at once."""
        now = utcnow()
        changes = {"last_delivery_at": now, "last_status": status, "last_error": error}
        done = error is None
        if done:
            metrics.delivered("delivered")
            changes["delivered"] = Webhook.delivered + 1
        else:
            metrics.delivered("failed")
            first = webhook.first_failure_at or now
            if now - first >= self.give_up:
                metrics.delivered("given_up")
                done = True
                changes["failed"] = Webhook.failed + 1
            else:
                delay = min(self.retry_base * 2 ** webhook.attempts, MAX_DELAY)
                changes.update(attempts=webhook.attempts + 1, first_failure_at=first,
                               next_attempt_at=now + timedelta(seconds=delay))
        if done:
            position = event["position"]
            changes.update(xid=str(position.xid), seq=position.seq, attempts=0,
                           first_failure_at=None, next_attempt_at=None)
        Webhook.update(**changes).where(Webhook.id == webhook.id,
                                        Webhook.lease_owner == self.owner).execute()
        return done
