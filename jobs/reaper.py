"""The reaper (CONTRACT 4.1): ends the active instances past a deadline.

- idle: an active instance with no activity for idle_timeout_s (plus the
  second of tolerance of 4.7) -> status `error`, status_reason
  `idle_timeout`;
- expired: an active or paused instance whose expires_at has passed ->
  status `terminated`, status_reason `expired`.

Runs every INSTANCES_LIFECYCLE_INTERVAL seconds (default 1) in every server
process. A pass reads only the due instances, from the partial indexes on
idle_deadline and expires_at (models.Instance), BATCH at a time, and ends
each with an UPDATE conditional on the state it read (status,
last_activity_at, updated_at): of several processes or hosts reading the
same instance, one changes it and writes its `lifecycle` log in the same
transaction; the others find the condition false and do nothing (on
PostgreSQL the second UPDATE waits for the first's row lock, then reads the
committed row again and finds it changed). A write
that lands between the read and the UPDATE (a heartbeat, a new status, a
log a second after the last) moves one of those columns, and wins.

Each transition is counted in /metrics (metrics.lifecycle_ended) once it
has committed.
"""
import operator
from datetime import timedelta
from functools import partial, reduce

import metrics
from models import ACTIVE_STATUSES, EXPIRING, Instance, InstanceLog
from storage import db
from storage.engines import is_sqlite
from storage.fields import utcnow
from storage.reads import IndexedBy
from storage.writes import write

# Instances read, and ended, per transaction.
BATCH = 100
# 4.7: idle means more than idle_timeout_s + 1 s since the last activity.
TOLERANCE = timedelta(seconds=1)

# reason: (the status it sets, the log's message)
REASONS = {
    "idle_timeout": ("error", "Ended by the service: no activity for idle_timeout_s"),
    "expired": ("terminated", "Ended by the service: expires_at has passed"),
}


class Reaper:
    name = "lifecycle"

    def __init__(self, interval=1.0, batch=BATCH):
        self.interval, self.batch = interval, batch

    @classmethod
    def from_config(cls, config):
        return cls(config["LIFECYCLE_INTERVAL"])

    def run_once(self, now=None):
        """One pass: every instance due at `now` ended (by this process or
        another). Returns how many this process ended."""
        now = now or utcnow()
        ended = 0
        for reason in REASONS:
            while True:
                due = self.due(reason, now)
                changed = self.end(due, reason)
                ended += changed
                # A full batch of which some changed: more may be waiting.
                # One of which none changed was taken by another process
                # (or changed meanwhile): reading it again would loop.
                if len(due) < self.batch or not changed:
                    break
        return ended

    def due(self, reason, now):
        """The (id, status, last_activity_at, updated_at) of up to a batch of
        instances due for `reason` at `now`, through their partial index."""
        columns = (Instance.id, Instance.status, Instance.last_activity_at, Instance.updated_at)
        if reason == "idle_timeout":
            query = Instance.select(*columns).where(
                Instance.idle_deadline.is_null(False),
                Instance.idle_deadline < now - TOLERANCE).order_by(Instance.idle_deadline)
        else:
            query = Instance.select(*columns).where(
                Instance.expires_at.is_null(False), EXPIRING,
                Instance.expires_at <= now).order_by(Instance.expires_at)
            if is_sqlite():
                # SQLite's planner would rather read every active instance
                # from the status index (78 ms at 100,000) than this one.
                query = query.from_(IndexedBy(Instance, "instance_expiring"))
        return list(query.limit(self.batch).tuples())

    def end(self, due, reason):
        """End the instances of `due` still as they were read, with a log
        each, in one transaction: one UPDATE whose condition is, for each
        row, its id and the state read (a write since makes it false), and
        one INSERT of the logs of those it changed (RETURNING). Two
        statements a batch, rather than two an instance: at 100,000
        instances with 1,000 due, that took a pass on PostgreSQL from 3.4 s
        to a fraction of it. Returns how many it ended."""
        if not due:
            return 0
        status, message = REASONS[reason]
        was = {str(row[0]): row[1] for row in due}
        still = reduce(operator.or_, [
            (Instance.id == instance_id) & (Instance.status == status_read)
            & (Instance.last_activity_at == active_at) & (Instance.updated_at == updated_at)
            for instance_id, status_read, active_at, updated_at in due])
        # The ids once more on their own: SQLite then looks them up by key
        # rather than test the hundred-way OR on every row (6 s a batch).
        still = Instance.id.in_([row[0] for row in due]) & still
        if reason == "idle_timeout":
            still = still & Instance.status.in_(ACTIVE_STATUSES)
        with write():
            now = utcnow()
            # 4.7: the service's own change counts as activity.
            done = sorted(str(instance_id) for instance_id, in Instance.update(
                status=status, status_reason=reason, updated_at=now, last_activity_at=now,
                idle_deadline=None).where(still).returning(Instance.id).tuples().execute())
            if done:
                # In id order: appends lock instances in that order too
                # (storage.writes.insert_all), so the two never wait on
                # each other in a cycle (PostgreSQL).
                InstanceLog.add([{
                    "instance_id": instance_id, "log_type": "lifecycle", "level": "warn",
                    "message": f"{message} (status {was[instance_id]} -> {status}).",
                    "details": {"reason": reason, "previous_status": was[instance_id]}}
                    for instance_id in done])
                for instance_id in done:
                    db.writer.after_commit(partial(db.tail.touched, instance_id))
        for _ in done:
            metrics.lifecycle_ended(reason)
        return len(done)
