"""The purge (CONTRACT 4.2): deletes what the retention settings say has
been kept long enough, and `instance-api purge [--dry-run]`.

- INSTANCES_LOG_RETENTION: logs older than it. A log's age is that of its
  id (UUIDv7, made with its created_at), so the old logs are a range of the
  primary key: no index of their own to keep up on every append;
- INSTANCES_LOG_MAX_PER_INSTANCE: beyond it, an instance's oldest logs (by
  seq);
- INSTANCES_ENDED_RETENTION: ended instances with no activity for that
  long: their logs in batches first, the instance row (and its plans, which
  cascade) last, and only if it is still ended and still quiet then (4.7).

All off by default. Runs every INSTANCES_PURGE_INTERVAL seconds (default 60)
in every server process, in transactions of at most BATCH rows, so a writer
waits for one batch at most. Copies running at once stay correct: each
DELETE reports the rows it removed (RETURNING), and the instances' log_count
goes down by those alone, in the same transaction; an instance's excess and
an ended instance's state are read again inside the transaction that acts on
them. A log's seq is never reused (models.Instance.log_seq) and a cursor on
a purged log answers 410 (InstanceLog.was_purged).
"""
import argparse
import sys
from collections import Counter

from peewee import SQL, fn

import metrics
from models import ENDED_STATUSES, Instance, InstanceLog
from storage import db
from storage.engines import for_write
from storage.fields import utcnow
from storage.ids import floor_id
from storage.writes import write

BATCH = 1000
# Ended instances read per query.
INSTANCES_PER_READ = 100


class Purge:
    name = "purge"

    def __init__(self, interval=60.0, log_retention=None, max_per_instance=None,
                 ended_retention=None, batch=BATCH):
        self.interval, self.batch = interval, batch
        self.log_retention, self.max_per_instance = log_retention, max_per_instance
        self.ended_retention = ended_retention

    @classmethod
    def from_config(cls, config):
        return cls(config["PURGE_INTERVAL"], config["LOG_RETENTION"],
                   config["LOG_MAX_PER_INSTANCE"], config["ENDED_RETENTION"])

    @property
    def enabled(self):
        return any(setting is not None for setting in (
            self.log_retention, self.max_per_instance, self.ended_retention))

    def run_once(self, now=None):
        """Purge what is due at `now`; {kind: rows deleted} by this process."""
        now = now or utcnow()
        deleted = Counter()
        if self.log_retention is not None:
            deleted["old_logs"] = self.old_logs(now)
        if self.max_per_instance is not None:
            deleted["excess_logs"] = self.excess_logs()
        if self.ended_retention is not None:
            instances, logs = self.ended_instances(now)
            deleted["ended_instances"], deleted["ended_instance_logs"] = instances, logs
        metrics.purged("logs", deleted["old_logs"] + deleted["excess_logs"]
                       + deleted["ended_instance_logs"])
        metrics.purged("instances", deleted["ended_instances"])
        return dict(deleted)

    def dry_run(self, now=None):
        """What run_once(now) would delete, counted: {kind: rows}. A log may
        be counted under more than one kind."""
        now = now or utcnow()
        found = {}
        if self.log_retention is not None:
            found["old_logs"] = InstanceLog.select().where(
                InstanceLog.id < floor_id(now - self.log_retention)).count()
        if self.max_per_instance is not None:
            found["excess_logs"] = Instance.select(fn.COALESCE(fn.SUM(
                Instance.log_count - self.max_per_instance), 0)).where(
                Instance.log_count > self.max_per_instance).scalar()
        if self.ended_retention is not None:
            instances, logs = Instance.select(
                fn.COUNT(Instance.id), fn.COALESCE(fn.SUM(Instance.log_count), 0)
            ).where(*self.ended(now)).tuples().first()
            found["ended_instances"], found["ended_instance_logs"] = instances, logs
        return found

    # -- logs by age ----------------------------------------------------------

    def old_logs(self, now):
        cutoff = floor_id(now - self.log_retention)
        total = 0
        while True:
            oldest = (InstanceLog.select(InstanceLog.id).where(InstanceLog.id < cutoff)
                      .order_by(InstanceLog.id).limit(self.batch))
            with write():
                gone = delete_logs(InstanceLog.id.in_(oldest))
            total += gone
            if gone < self.batch:
                return total

    # -- logs beyond the count ------------------------------------------------

    def excess_logs(self):
        """Reads every instance's log_count (no index: one on a column every
        append changes would cost the appends), then trims those over."""
        most = self.max_per_instance
        over = [key for key, in Instance.select(Instance.id).where(
            Instance.log_count > most).tuples()]
        total = 0
        for instance_id in over:
            while True:
                with write():
                    count = for_write(Instance.select(Instance.log_count).where(
                        Instance.id == instance_id)).scalar()
                    excess = min((count or 0) - most, self.batch)
                    if excess <= 0:
                        break
                    oldest = (InstanceLog.select(InstanceLog.id)
                              .where(InstanceLog.instance == instance_id)
                              .order_by(InstanceLog.seq).limit(excess))
                    gone = delete_logs(InstanceLog.id.in_(oldest))
                total += gone
                if gone < self.batch:
                    break
        return total

    # -- ended instances ------------------------------------------------------

    def ended(self, now):
        """Conditions: ended, and quiet for INSTANCES_ENDED_RETENTION."""
        return (Instance.last_activity_at < now - self.ended_retention,
                Instance.status.in_(ENDED_STATUSES))

    def ended_instances(self, now):
        instances = logs = 0
        while True:
            due = [key for key, in Instance.select(Instance.id).where(*self.ended(now))
                   .order_by(Instance.last_activity_at).limit(INSTANCES_PER_READ).tuples()]
            deleted = 0
            for instance_id in due:
                gone, removed = self.ended_instance(instance_id, now)
                logs += gone
                deleted += removed
            instances += deleted
            if len(due) < INSTANCES_PER_READ or not deleted:
                return instances, logs

    def ended_instance(self, instance_id, now):
        """(logs deleted, 1 if the instance was deleted else 0)."""
        still = (Instance.id == instance_id, *self.ended(now))
        logs = 0
        while True:
            with write():
                if not for_write(Instance.select(SQL("1")).where(*still)).exists():
                    return logs, 0     # changed since: it stays, with its logs
                batch = (InstanceLog.select(InstanceLog.id)
                         .where(InstanceLog.instance == instance_id).limit(self.batch))
                gone = delete_logs(InstanceLog.id.in_(batch))
                logs += gone
                if gone < self.batch:
                    # The last logs and the row in one transaction; the
                    # plans cascade, the label index follows (search.py).
                    removed = Instance.delete().where(*still).execute()
                    if removed:
                        db.writer.after_commit(lambda: db.tail.touched(str(instance_id)))
                    return logs, removed


def delete_logs(which):
    """Delete the logs `which` selects; their instances' log_count lowered
    by the rows this statement removed. Inside the caller's write."""
    removed = Counter(str(instance_id) for instance_id, in InstanceLog.delete().where(which)
                      .returning(InstanceLog.instance).tuples().execute())
    for instance_id, count in removed.items():
        Instance.update(log_count=Instance.log_count - count).where(
            Instance.id == instance_id).execute()
    return sum(removed.values())


def purge_command(argv):
    """`instance-api purge [--dry-run]`: purge once as the settings say, or
    say what that would delete."""
    parser = argparse.ArgumentParser(
        prog="instance-api purge",
        description="Delete once what INSTANCES_LOG_RETENTION, INSTANCES_LOG_MAX_PER_INSTANCE "
                    "and INSTANCES_ENDED_RETENTION say is due (a running server does this "
                    "every INSTANCES_PURGE_INTERVAL seconds).")
    parser.add_argument("--dry-run", action="store_true",
                        help="only count what would be deleted now")
    args = parser.parse_args(argv)
    from app import create_app   # the app imports the jobs' package, not this command
    from workers import STARTUP_ERRORS
    try:
        app = create_app()
    except STARTUP_ERRORS as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        purge = Purge.from_config(app.config)
        if not purge.enabled:
            print("Nothing to purge: INSTANCES_LOG_RETENTION, INSTANCES_LOG_MAX_PER_INSTANCE "
                  "and INSTANCES_ENDED_RETENTION are all off.")
            return 0
        with app.app_context(), db.connection_context():
            found = purge.dry_run() if args.dry_run else purge.run_once()
        verb = "Would delete" if args.dry_run else "Deleted"
        for kind, rows in found.items():
            print(f"{verb} {rows} {kind.replace('_', ' ')}")
        sys.stdout.flush()
        return 0
    finally:
        db.close_all()
