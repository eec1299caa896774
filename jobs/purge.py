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
in every server process, but one process at a time does it (of all workers
and hosts on the database): a pass first takes the `purge` lease
(jobs/lease.py, a row renewed while the pass works and given back at its
end; one of a process that died lapses in LEASE), and a process that finds
it held skips its pass. `instance-api purge` waits for it.

Writers never wait long on it (4.2: append p99 at most 2x during a purge).
Deleting a log costs far more than appending one: eleven b-trees (the table
and ten indexes, four of them led by instance_id, where old logs are
scattered) and as many pages written to the WAL at commit: about 0.2 ms a
row on SQLite, so the 1,000-row transactions of the first version held
SQLite's write lock for 200 ms to over a second, and appends queued behind
them (206 ms p99 against 20 without). So (Pace):
- each transaction is sized by time: the rows of the next one follow the
  time the last one held the write lock, aiming at TARGET (5 ms), from
  LEAST up to `batch` (BATCH, 1,000: the contract's most);
- after each, the purge pauses as long as the transaction took, and at
  least PAUSE (10 ms): a writer of another process waiting for SQLite's
  lock sleeps in its busy handler (1, 2, 5, 10 ms...) and must find the lock
  free when it wakes, not taken again by the next batch; in the server's
  own process, the threads queued on the writer lock get it. The purge
  thus holds the lock at most half the time, and a large purge takes
  longer: 449,000 logs of a 500,000-log file in 466 s alone (275 s with
  1,000-row batches), 400 to 600 logs a second under appends on a busy
  two-core machine, with append p99 1.2 to 1.3x that without a purge
  (12x with 1,000-row batches; bench/purge_ab.py);
- the instances' log_count is lowered by one UPDATE per transaction (joined
  to the counts the DELETE returned), not one per instance: a batch of old
  logs spans almost as many instances as logs.

Copies running at once (a lapsed lease, a test) stay correct: each DELETE
reports the rows it removed (RETURNING), and the instances' log_count goes
down by those alone, in the same transaction; an instance's excess and an
ended instance's state are read again inside the transaction that acts on
them. A log's seq is never reused (models.Instance.log_seq) and a cursor on
a purged log answers 410 (InstanceLog.was_purged).
"""
import argparse
import logging
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

from peewee import SQL, ValuesList, fn

import metrics
from jobs.lease import Lease, LeaseLost
from models import ENDED_STATUSES, Instance, InstanceLog
from storage import db
from storage.engines import for_write, is_sqlite
from storage.fields import utcnow
from storage.ids import floor_id
from storage.writes import write

log = logging.getLogger("instance_api")

# Rows per transaction: at most BATCH (CONTRACT 4.2), FIRST in the first
# one of a pass, then as many as fit in TARGET seconds, at least LEAST.
BATCH = 1000
FIRST = 20
LEAST = 5
TARGET = 0.005
# Seconds between two transactions: at least PAUSE, and at least as long as
# the last one took.
PAUSE = 0.010
LEASE = timedelta(seconds=30)
# Ended instances read per query.
INSTANCES_PER_READ = 100


class Pace:
    """The purge's transactions, sized by time and spaced out (see the
    module's docstring). `rows` is the size of the next one."""

    def __init__(self, most=BATCH, target=None, pause=None, stopping=None, lease=None):
        self.most = most
        self.target = TARGET if target is None else target
        self.pause = PAUSE if pause is None else pause
        self.rows = min(FIRST, most)
        self.stopping = stopping or threading.Event()
        self.lease = lease

    @contextmanager
    def transaction(self):
        """A write transaction of the purge, timed from the moment it holds
        the write lock to its commit; then the next size, and the pause.
        PurgeStopped before it when the job is told to stop."""
        if self.stopping.is_set():
            raise PurgeStopped
        if self.lease is not None:
            self.lease.keep()
        with write():
            started = time.perf_counter()
            yield
        took = time.perf_counter() - started
        # Towards TARGET, by at most a factor of two a step: one slow batch
        # (a checkpoint, a busy core) does not swing the size.
        scale = min(2.0, max(0.5, self.target / max(took, 1e-6)))
        self.rows = max(min(LEAST, self.most), min(self.most, int(self.rows * scale)))
        self.stopping.wait(max(self.pause, took))


class PurgeStopped(Exception):
    """The server is stopping: the pass ends between two transactions."""


class Purge:
    name = "purge"

    def __init__(self, interval=60.0, log_retention=None, max_per_instance=None,
                 ended_retention=None, batch=BATCH, target=None, pause=None):
        self.interval, self.batch = interval, batch
        self.target, self.pause = target, pause
        self.log_retention, self.max_per_instance = log_retention, max_per_instance
        self.ended_retention = ended_retention
        self.lease = Lease("purge", duration=LEASE)
        self.stopping = threading.Event()

    @classmethod
    def from_config(cls, config):
        return cls(config["PURGE_INTERVAL"], config["LOG_RETENTION"],
                   config["LOG_MAX_PER_INSTANCE"], config["ENDED_RETENTION"])

    @property
    def enabled(self):
        return any(setting is not None for setting in (
            self.log_retention, self.max_per_instance, self.ended_retention))

    def stop(self):
        """The server is stopping (jobs.runner): a pass ends after the
        transaction in flight, and gives the lease back."""
        self.stopping.set()

    def run_once(self, now=None):
        """Purge what is due at `now`; {kind: rows deleted} by this process,
        or None when another process holds the purge's lease (it purges)."""
        if not self.enabled:
            return {}
        if not self.lease.take():
            return None
        now = now or utcnow()
        pace = Pace(self.batch, self.target, self.pause, self.stopping, self.lease)
        deleted = Counter()
        try:
            if self.log_retention is not None:
                self.old_logs(now, pace, deleted)
            if self.max_per_instance is not None:
                self.excess_logs(pace, deleted)
            if self.ended_retention is not None:
                self.ended_instances(now, pace, deleted)
        except (LeaseLost, PurgeStopped) as exc:
            log.warning("Purge pass ended early: %s", str(exc) or "the server is stopping")
        finally:
            try:
                self.lease.release()
            finally:
                metrics.purged("logs", deleted["old_logs"] + deleted["excess_logs"]
                               + deleted["ended_instance_logs"])
                metrics.purged("instances", deleted["ended_instances"])
        return {kind: deleted[kind] for kind in self.kinds()}

    def kinds(self):
        kinds = []
        if self.log_retention is not None:
            kinds.append("old_logs")
        if self.max_per_instance is not None:
            kinds.append("excess_logs")
        if self.ended_retention is not None:
            kinds += ["ended_instances", "ended_instance_logs"]
        return kinds

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

    def old_logs(self, now, pace, deleted):
        cutoff = floor_id(now - self.log_retention)
        while True:
            rows = pace.rows
            oldest = (InstanceLog.select(InstanceLog.id).where(InstanceLog.id < cutoff)
                      .order_by(InstanceLog.id).limit(rows))
            with pace.transaction():
                gone = delete_logs(InstanceLog.id.in_(oldest))
            deleted["old_logs"] += gone
            if gone < rows:
                return

    # -- logs beyond the count ------------------------------------------------

    def excess_logs(self, pace, deleted):
        """Reads every instance's log_count (no index: one on a column every
        append changes would cost the appends), then trims those over."""
        most = self.max_per_instance
        over = [key for key, in Instance.select(Instance.id).where(
            Instance.log_count > most).tuples()]
        for instance_id in over:
            while True:
                with pace.transaction():
                    count = for_write(Instance.select(Instance.log_count).where(
                        Instance.id == instance_id)).scalar()
                    excess = min((count or 0) - most, pace.rows)
                    gone = 0
                    if excess > 0:
                        oldest = (InstanceLog.select(InstanceLog.id)
                                  .where(InstanceLog.instance == instance_id)
                                  .order_by(InstanceLog.seq).limit(excess))
                        gone = delete_logs(InstanceLog.id.in_(oldest))
                deleted["excess_logs"] += gone
                if gone == 0 or gone == (count or 0) - most:
                    break

    # -- ended instances ------------------------------------------------------

    def ended(self, now):
        """Conditions: ended, and quiet for INSTANCES_ENDED_RETENTION."""
        return (Instance.last_activity_at < now - self.ended_retention,
                Instance.status.in_(ENDED_STATUSES))

    def ended_instances(self, now, pace=None, deleted=None):
        pace = pace or Pace(self.batch, self.target, self.pause, self.stopping)
        deleted = Counter() if deleted is None else deleted
        while True:
            due = [key for key, in Instance.select(Instance.id).where(*self.ended(now))
                   .order_by(Instance.last_activity_at).limit(INSTANCES_PER_READ).tuples()]
            removed_now = 0
            for instance_id in due:
                gone, removed = self.ended_instance(instance_id, now, pace)
                deleted["ended_instance_logs"] += gone
                removed_now += removed
            deleted["ended_instances"] += removed_now
            if len(due) < INSTANCES_PER_READ or not removed_now:
                return deleted["ended_instances"], deleted["ended_instance_logs"]

    def ended_instance(self, instance_id, now, pace=None):
        """(logs deleted, 1 if the instance was deleted else 0)."""
        pace = pace or Pace(self.batch, self.target, self.pause, self.stopping)
        still = (Instance.id == instance_id, *self.ended(now))
        logs = 0
        while True:
            rows = pace.rows
            with pace.transaction():
                if not for_write(Instance.select(SQL("1")).where(*still)).exists():
                    return logs, 0     # changed since: it stays, with its logs
                batch = (InstanceLog.select(InstanceLog.id)
                         .where(InstanceLog.instance == instance_id).limit(rows))
                gone = delete_logs(InstanceLog.id.in_(batch))
                logs += gone
                removed = 0
                if gone < rows:
                    # The last logs and the row in one transaction; the
                    # plans cascade, the label index follows (search.py).
                    removed = Instance.delete().where(*still).execute()
                    if removed:
                        db.writer.after_commit(lambda: db.tail.touched(str(instance_id)))
            if gone < rows:
                return logs, removed


def delete_logs(which):
    """Delete the logs `which` selects; their instances' log_count lowered
    by the rows this statement removed, in one UPDATE. Inside the caller's
    write."""
    removed = Counter(str(instance_id) for instance_id, in InstanceLog.delete().where(which)
                      .returning(InstanceLog.instance).tuples().execute())
    if not removed:
        return 0
    ids = sorted(removed)
    if db.for_update:
        # PostgreSQL: the instances' rows locked in id order, the order in
        # which appends lock them (storage.writes.insert_all), so that the
        # UPDATE below never waits on an append that waits on it.
        list(for_write(Instance.select(SQL("1")).where(Instance.id.in_(ids))
                       .order_by(Instance.id)).tuples())
    counts = ValuesList([(Instance.id.db_value(key), removed[key]) for key in ids],
                        alias="removed")
    # VALUES names its columns column1, column2... on both engines; its
    # parameters are text to PostgreSQL.
    key = counts.c.column1 if is_sqlite() else counts.c.column1.cast("uuid")
    Instance.update(log_count=Instance.log_count - counts.c.column2).from_(counts).where(
        Instance.id == key).execute()
    return sum(removed.values())


def purge_when_free(purge):
    """run_once once no other process holds the purge's lease (a server's
    pass in progress): after the command, what was due when it started is
    gone. None when stopped while waiting."""
    told = False
    while True:
        found = purge.run_once()
        if found is not None:
            return found
        if not told:
            holder = purge.lease.holder()
            print(f"Another process is purging ({holder[0] if holder else 'just ended'}): "
                  "waiting for it to finish", file=sys.stderr, flush=True)
            told = True
        if purge.stopping.wait(1.0):
            return None


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
        # SIGTERM ends the pass after its transaction in flight, and the
        # lease is given back rather than left to lapse.
        signal.signal(signal.SIGTERM, lambda *_: purge.stop())
        with app.app_context(), db.connection_context():
            found = purge.dry_run() if args.dry_run else purge_when_free(purge)
        if found is None:
            return 1
        verb = "Would delete" if args.dry_run else "Deleted"
        for kind, rows in found.items():
            print(f"{verb} {rows} {kind.replace('_', ' ')}")
        sys.stdout.flush()
        return 0
    finally:
        db.close_all()
