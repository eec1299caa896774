"""The webhook rows: what to deliver where (url, types, label), the secret
(and, for a day after a rotation, the one before it), how far delivery has
gone (the position of the last event handled, feeds.py), the retry state
of the event being tried, the delivery lease, and the outcome counters.

Not here: the HTTP routes (routes/webhooks.py), sending (delivery.py).
"""
from datetime import timedelta

from peewee import BigIntegerField, BooleanField, IntegerField, Model, TextField

from feed_reads import EVENTS, Query, parse_text
from feeds import Event, Position
from fleet_schemas import parse_types
from labels import parse_selectors
from storage import db
from storage.fields import CanonicalUUIDField, UTCDateTimeField, utcnow
from storage.ids import new_id
from webhooks.signing import new_secret

# For how long deliveries are signed with the secret a rotation replaced.
OLD_SECRET_KEPT = timedelta(hours=24)


class Webhook(Model):
    id = CanonicalUUIDField(primary_key=True, default=new_id)
    url = TextField()
    types = TextField(null=True)
    label = TextField(null=True)
    description = TextField(null=True)
    active = BooleanField(default=True)
    secret = TextField()
    old_secret = TextField(null=True)
    old_secret_until = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)
    # The position of the last event handled (delivered or given up).
    xid = TextField(default="0")
    seq = BigIntegerField(default=0)
    # The event being tried: how many attempts failed, since when, and when
    # the next is due.
    attempts = IntegerField(default=0)
    first_failure_at = UTCDateTimeField(null=True)
    next_attempt_at = UTCDateTimeField(null=True)
    # Who delivers now, until when (delivery.py).
    lease_owner = TextField(null=True)
    lease_until = UTCDateTimeField(null=True)
    last_delivery_at = UTCDateTimeField(null=True)
    last_status = IntegerField(null=True)
    last_error = TextField(null=True)
    delivered = BigIntegerField(default=0)
    failed = BigIntegerField(default=0)

    class Meta:
        database = db
        table_name = "webhook"
        indexes = ((("created_at", "id"), False),)

    @property
    def position(self):
        return Position(int(self.xid), self.seq)

    def filters(self):
        """The /api/events arguments that select this webhook's events."""
        found = {}
        if self.types:
            found["type"] = parse_types(self.types)
        if self.label:
            found["label"] = tuple(parse_selectors(self.label))
        return found

    def secrets(self, now=None):
        """The secrets deliveries are signed with now: the current one, and
        the one a rotation replaced for a day after it."""
        if self.old_secret and self.old_secret_until and \
                self.old_secret_until > (now or utcnow()):
            return [self.secret, self.old_secret]
        return [self.secret]


def feed_end():
    """The position of the newest event (START when there is none): where a
    new or re-activated webhook starts, so it is sent what comes next."""
    found = Event.select(EVENTS.position_text()).order_by(
        *[key.desc() for key in EVENTS.order()]).limit(1).scalar()
    return Position(0, 0) if found is None else parse_text(found)


def oldest_pending():
    """The oldest position an active webhook has still to deliver after
    (the event purge keeps what follows it), or None."""
    rows = Webhook.select(Webhook.xid, Webhook.seq).where(Webhook.active).tuples()
    positions = [Position(int(xid), seq) for xid, seq in rows]
    return min(positions) if positions else None


def pending(webhook, limit=10_000):
    """How many events wait for this webhook (counted up to `limit`)."""
    if not webhook.active:
        return 0
    return Query(EVENTS, webhook.filters()).count_after(webhook.position, limit, held=True)


def representation(webhook, secret=None):
    row = {name: getattr(webhook, name) for name in (
        "id", "url", "types", "label", "description", "active", "created_at", "updated_at",
        "last_delivery_at", "last_status", "last_error", "failed")}
    row["id"] = str(row["id"])
    row["pending"] = pending(webhook)
    if secret is not None:
        row["secret"] = secret
    return row


def create(data):
    """A new webhook from the create body, starting after the newest event;
    (its representation with the secret, the row)."""
    secret, now = new_secret(), utcnow()
    webhook = Webhook.create(secret=secret, created_at=now, updated_at=now, **data,
                             **starting_point())
    return representation(webhook, secret)


def starting_point():
    end = feed_end()
    return {"xid": str(end.xid), "seq": end.seq, "attempts": 0, "first_failure_at": None,
            "next_attempt_at": None}


def update(webhook, changes):
    """Apply `changes`; a webhook made active again starts after the newest
    event (none is queued while it is inactive, CONTRACT 4.7)."""
    changed = {name: value for name, value in changes.items()
               if getattr(webhook, name) != value}
    if not changed:
        return webhook
    if changed.get("active") is True:
        changed.update(starting_point())
    changed["updated_at"] = utcnow()
    for name, value in changed.items():
        setattr(webhook, name, value)
    webhook.save(only=list(changed))
    return webhook


def rotate(webhook):
    """A new secret; the old one still signs for OLD_SECRET_KEPT."""
    secret, now = new_secret(), utcnow()
    webhook.old_secret, webhook.old_secret_until = webhook.secret, now + OLD_SECRET_KEPT
    webhook.secret, webhook.updated_at = secret, now
    webhook.save(only=["secret", "old_secret", "old_secret_until", "updated_at"])
    return secret
