"""The event purge: events older than INSTANCES_EVENT_RETENTION (default
7 days) are deleted, a batch of at most BATCH at a time, every
INSTANCES_EVENT_PURGE_INTERVAL seconds (default 60), except those an
active webhook has still to deliver (CONTRACT 4.7).

Deleted in feed order (feeds.py), so what is gone is always the oldest part
of the feed, and the position of the last event deleted is recorded
(feeds.mark_purged): a cursor older than it answers 410. One process of
all workers and hosts does a pass at a time, holding the `event-purge`
lease (jobs/lease.py); the others skip theirs. Copies that overlap anyway
(a lapsed lease) stay correct: each batch is a DELETE of rows read in the
same write transaction, and the mark never moves back.
"""

from peewee import Cast, Tuple

from feed_reads import EVENTS
from feeds import Event, Position, mark_purged
from jobs.lease import Lease
from storage.engines import is_sqlite
from storage.fields import utcnow
from storage.reads import Slot, run
from storage.writes import write
from webhooks.store import oldest_pending

BATCH = 1000


class EventPurge:
    name = "event-purge"

    def __init__(self, app):
        self.interval = app.config["EVENT_PURGE_INTERVAL"]
        self.retention = app.config["EVENT_RETENTION"]
        self.lease = Lease("event-purge")

    def run_once(self):
        """Purge until nothing is due; the number of events deleted (0 when
        another process holds the lease)."""
        if not self.lease.take():
            return 0
        try:
            deleted = 0
            while True:
                self.lease.keep()
                count = self.batch()
                deleted += count
                if count < BATCH:
                    return deleted
        finally:
            self.lease.release()

    def batch(self):
        cutoff = utcnow() - self.retention
        keep = oldest_pending()   # events after this are some webhook's to deliver
        with write():
            conditions = [Event.at < Slot("cutoff")]
            if keep is not None:
                conditions.append(keep_condition())
            values = {"cutoff": cutoff, "limit": BATCH}
            if keep is not None:
                values.update(xid=keep.xid, seq=keep.seq)
            rows = run(("purge events", keep is not None), lambda: Event.select(
                Event.id, EVENTS.position_text()).where(*conditions).order_by(
                *EVENTS.order()).limit(Slot("limit")), values).fetchall()
            if not rows:
                return 0
            Event.delete().where(Event.id.in_([row[0] for row in rows])).execute()
            xid, _, seq = rows[-1][1].rpartition(".")
            mark_purged(Position(int(xid or 0), int(seq)))
        return len(rows)


def keep_condition():
    """Events at or before the bound position (xid, seq) only."""
    if is_sqlite():
        return EVENTS.seq <= Slot("seq")
    return Tuple(EVENTS.xid, EVENTS.seq) <= Tuple(Cast(Slot("xid", str), "xid8"), Slot("seq"))
