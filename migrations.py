"""Schema versions: bring a database to the version of the tables in
models.py. An empty database is created, an older one migrated step by step,
a newer one refused.

Not here: the tables themselves (models.py) or opening the database
(storage.engines).
"""
import logging
import time

import orjson
from peewee import SQL, fn
from playhouse.migrate import SchemaMigrator, migrate

import feeds
import search
from jobs.lease import JobLease
from log_triggers import create_triggers
from models import (
    MODELS, Instance, InstanceLog, InstancePlan, SchemaVersion, recount_logs,
)
from storage import counters, db, label_rows
from storage.engines import is_sqlite, schema_lock
from storage.fields import CanonicalUUIDField, UTCDateTimeField, _dumps

log = logging.getLogger("instance_api")

# Files written by the first release have the tables but no schema_version.
FIRST_VERSION = 1
SCHEMA_VERSION = 14


class SchemaTooNew(Exception):
    pass


def _add_plan_tree_and_times(migrator):
    """plans' parent_id, started_at and completed_at"""
    migrate(
        migrator.add_column("instance_plan", "parent_id", InstancePlan.parent),
        migrator.add_column("instance_plan", "started_at", InstancePlan.started_at),
        migrator.add_column("instance_plan", "completed_at", InstancePlan.completed_at),
    )


def _count_logs_per_instance(migrator):
    """each instance's log counter"""
    # One ALTER TABLE ... NOT NULL DEFAULT 0. Without allow_not_null,
    # playhouse would rebuild the table to add NOT NULL afterwards, and
    # dropping the old `instance` table would cascade to every log and plan.
    migrate(migrator.add_column("instance", "log_count", Instance.log_count,
                                allow_not_null=True))
    recount_logs()


def _canonical_json(migrator):
    """JSON objects stored with sorted keys"""
    # Until version 4, JSON text was stored in the order it was sent; reads
    # now pass the stored text on as the response's (representations). jsonb on
    # PostgreSQL keeps no order of its own, and its rows are sorted on output.
    if not is_sqlite():
        return
    db.register_function(_canonical, "canonical_json", 1, deterministic=True)
    for model, column in ((Instance, "configuration"), (Instance, "environment_variables"),
                          (InstanceLog, "details")):
        db.execute_sql(f'UPDATE "{model._meta.table_name}" '
                       f'SET "{column}" = canonical_json("{column}")')


def _canonical(text):
    return _dumps(orjson.loads(text))


def _canonical_uuids(migrator):
    """UUIDs stored as the API writes them"""
    # Until version 6, SQLite held UUIDs as 32 hex digits (CanonicalUUIDField).
    # Keys and the columns that refer to them change in one transaction;
    # the foreign keys are checked at its commit, when all agree again.
    if not is_sqlite():
        return
    db.execute_sql("PRAGMA defer_foreign_keys = ON")
    for model in (Instance, InstanceLog, InstancePlan):
        names = [field.column_name for field in model._meta.sorted_fields
                 if isinstance(getattr(field, "rel_field", field), CanonicalUUIDField)]
        db.execute_sql(f'UPDATE "{model._meta.table_name}" SET '
                       + ", ".join(f'"{name}" = {_dashed(name)}' for name in names))


def _dashed(name):
    """SQL: the column's 32 hex digits as a canonical UUID; NULL or text
    already dashed as it is."""
    column = f'"{name}"'
    dashed = " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length
                                in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))
    return f"CASE WHEN length({column}) = 32 THEN {dashed} ELSE {column} END"


def _labels_and_search(migrator):
    """labels, the label and search indexes"""
    # NOT NULL with the column's DEFAULT '{}' in one ALTER TABLE: every
    # instance has no labels (a table rebuild would cascade, see version 3).
    migrate(migrator.add_column("instance", "labels", Instance.labels, allow_not_null=True))
    search.create_indexes()
    search.fill_indexes()


def _sequence_logs(migrator):
    """logs numbered in the order they were committed (seq)"""
    # Version 8: each log's seq, its place in its instance's log in commit
    # order (log_triggers.py). The logs already there are numbered in
    # the order the `after` cursor read them until now: created_at, then id.
    # The unique index on (instance_id, seq) comes after, with the other
    # missing indexes, and the triggers are made again with the seq.
    migrate(migrator.add_column("instance_log", "seq", InstanceLog.seq))
    if is_sqlite():
        db.execute_sql("DROP TRIGGER IF EXISTS instance_log_counted")   # IF NOT EXISTS keeps it
    number_logs()


def _lifecycle(migrator):
    """instances' activity, deadlines and end reason; log_seq"""
    # Version 9 (CONTRACT 4.1, 4.7). NOT NULL columns are added with a
    # DEFAULT, or filled before NOT NULL is set on PostgreSQL: a table
    # rebuild on SQLite would cascade to every log and plan (version 3).
    if is_sqlite():
        activity = UTCDateTimeField(constraints=[SQL("DEFAULT ''")])
    else:
        activity = UTCDateTimeField(null=True)
    migrate(
        migrator.add_column("instance", "log_seq", Instance.log_seq, allow_not_null=True),
        migrator.add_column("instance", "idle_timeout_s", Instance.idle_timeout_s),
        migrator.add_column("instance", "expires_at", Instance.expires_at),
        migrator.add_column("instance", "status_reason", Instance.status_reason),
        migrator.add_column("instance", "idle_deadline", Instance.idle_deadline),
        migrator.add_column("instance", "last_activity_at", activity, allow_not_null=True),
    )
    if is_sqlite():
        # Made again with log_seq and the activity (IF NOT EXISTS keeps it).
        db.execute_sql("DROP TRIGGER IF EXISTS instance_log_counted")
    # 4.7: the latest of updated_at and the newest log or plan, never just
    # created_at: an instance that ended yesterday must not look ended
    # months ago to INSTANCES_ENDED_RETENTION.
    newest_log = (InstanceLog.select(fn.MAX(InstanceLog.created_at))
                  .where(InstanceLog.instance == Instance.id))
    newest_plan = (InstancePlan.select(fn.MAX(InstancePlan.updated_at))
                   .where(InstancePlan.instance == Instance.id))
    latest = fn.MAX if is_sqlite() else fn.GREATEST
    Instance.update(log_seq=Instance.log_count, last_activity_at=latest(
        Instance.updated_at, fn.COALESCE(newest_log, Instance.updated_at),
        fn.COALESCE(newest_plan, Instance.updated_at))).execute()
    if not is_sqlite():
        migrate(migrator.add_not_null("instance", "last_activity_at"))


def _count_instances(migrator):
    """instances counted by status and type (instance_count)"""
    # The counters and their triggers, then the counts of what is there, so
    # the counts read from them are exact from the first request on.
    counters.create()
    counters.fill()


def _fleet_feeds(migrator):
    """logs numbered fleet-wide, the event table"""
    # Version 11: each log's place in the
    # fleet's log (feeds.py), numbered in rowid order for the logs already
    # there on SQLite, by the new columns' defaults on PostgreSQL. The rest
    # (event table, triggers, indexes) is made by feeds.create below.
    feeds.add_log_positions()


def _label_activity(migrator):
    """each label row with its instance's activity (SQLite)"""
    search.create_label_activity()


def _label_rows(migrator):
    """label rows and counters, GIN indexes without a pending list (PostgreSQL)"""
    # SQLite has had them since version 7. The trigger first, then the rows
    # of what is there, in one transaction: exact from the first request.
    if is_sqlite():
        return
    label_rows.create()
    label_rows.fill()
    search.write_through_gin()


# Instances whose logs one UPDATE numbers: bounded work per statement, and a
# progress line between statements on a big table.
NUMBERING_CHUNK = 1000


def number_logs(chunk=NUMBERING_CHUNK):
    """Set every log's seq: 1, 2, 3... within its instance, in created_at
    and then id order, a chunk of instances per statement."""
    total = InstanceLog.select().count()
    if not total:
        return
    log.info("Schema version 8: numbering %d logs in the order of each instance's log", total)
    ids = [key for key, in Instance.select(Instance.id).order_by(Instance.id).tuples()]
    done, reported = 0, time.monotonic()
    for start in range(0, len(ids), chunk):
        first, last = ids[start], ids[min(start + chunk, len(ids)) - 1]
        numbered = (InstanceLog.select(InstanceLog.id, fn.row_number().over(
            partition_by=[InstanceLog.instance],
            order_by=[InstanceLog.created_at, InstanceLog.id]).alias("n"))
            .where(InstanceLog.instance.between(first, last)).alias("numbered"))
        done += (InstanceLog.update(seq=numbered.c.n).from_(numbered)
                 .where(InstanceLog.id == numbered.c.id).execute())
        if time.monotonic() - reported > 5 or done == total:
            log.info("Numbered %d of %d logs (%d%%)", done, total, 100 * done // total)
            reported = time.monotonic()


# MIGRATIONS[n] takes a database at version n - 1 to version n; its
# docstring is what the log says it does. New tables, indexes and triggers
# need no entry: create_tables adds whatever is missing (version 4's sort
# indexes, version 5's log counting trigger, version 12's job_lease table:
# one purge at a time, jobs/lease.py).
MIGRATIONS = {2: _add_plan_tree_and_times, 3: _count_logs_per_instance, 4: _canonical_json,
              6: _canonical_uuids, 7: _labels_and_search, 8: _sequence_logs,
              9: _lifecycle, 10: _count_instances, 11: _fleet_feeds, 13: _label_activity,
              14: _label_rows}


def create_tables():
    """Bring the database to SCHEMA_VERSION: create it when empty, migrate it
    when older, refuse it when a newer server wrote it. A database already at
    SCHEMA_VERSION is only read, so a read-only file can serve.

    Servers that start together take turns (engines.schema_lock) and read
    the version again once it is their turn: the first creates or migrates,
    the others find it done."""
    with db.connection_context():
        version = checked(stored_version())
        if version == SCHEMA_VERSION:
            if not is_sqlite() and not search.has_trigram_index():
                with schema_lock():   # in case the extension was installed since
                    search.create_trigram_index()
            return
        with schema_lock():
            version = checked(stored_version())
            if version == SCHEMA_VERSION:
                return
            migrator = SchemaMigrator.from_database(db.obj)
            for step in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                if step in MIGRATIONS:
                    log.info("Migrating the database to schema version %d: %s", step,
                             MIGRATIONS[step].__doc__)
                    MIGRATIONS[step](migrator)
            db.create_tables(MODELS, safe=True)
            db.create_tables(webhook_models(), safe=True)
            db.create_tables([JobLease], safe=True)
            feeds.create()
            create_triggers()
            counters.create()
            search.create_indexes()
            search.create_label_activity()
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)


def webhook_models():
    # Imported here: webhooks.store reads the feeds through the routes'
    # list machinery, which imports the models this module migrates.
    from webhooks.store import Webhook
    return [Webhook]


def checked(version):
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this server's "
            f"{SCHEMA_VERSION}; run a newer instance-api or another file")
    return version


def stored_version():
    """The schema version of the open file; None for an empty file."""
    tables = set(db.get_tables())
    if Instance._meta.table_name not in tables:
        return None
    if SchemaVersion._meta.table_name not in tables:
        return FIRST_VERSION
    return SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()
