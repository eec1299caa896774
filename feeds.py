"""The fleet's two feeds (CONTRACT 4.3, 4.4): every log of every instance,
and every change of an instance or plan (events), each row with a position
in commit order that a follower moves along, and that stays valid when rows
are deleted.

Positions. SQLite has one writer at a time, so a number taken in the
writing transaction is commit order: a log's `fleet_seq` is the next value
of a counter row (`feed_counter`, never going back, unlike a rowid that the
deletion of the newest row would hand out again), set by the log trigger
(log_triggers.py) in the statement that inserts it; an event's
`position` is its AUTOINCREMENT key. PostgreSQL takes a sequence value
before its transaction commits, and a later value can commit first; so each
row also keeps the id of the transaction that wrote it (`xid8`), and a
reader is served only the rows of transactions older than every transaction
still open (`xid < pg_snapshot_xmin(pg_current_snapshot())`), in (xid, seq)
order: the rows below that line are final, and whatever commits later has a
larger xid, so it comes after any position already served. No lock is
shared by the writers: both columns are column defaults.

Events are written by triggers on `instance` and `instance_plan`, in the
writing statement's transaction, whoever writes (a request, group commit,
the reaper, the purge): exactly when a row is inserted or deleted, or its
updated_at moves. Their `data` is the row as a GET answers it (the output
schema's members, in its order), environment variable values redacted;
`site_id` and `labels` are the instance's, kept for the filters. Deleting
an instance makes one instance.deleted: the plans its delete cascades to
make none.

Not here: the routes that read the feeds (routes/feeds.py), webhooks
(webhooks/), the per-instance tail (storage/tail.py, models.py).
"""
import re
from typing import NamedTuple

from peewee import BigIntegerField, Model, TextField

from storage import db
from storage.engines import is_sqlite
from storage.fields import CanonicalUUIDField, ObjectField, UTCDateTimeField
from storage.tail import FLEET_LOGS

# Keys of the wait registry (storage.tail) for the fleet feeds, beside the
# instance ids of the per-instance tails.
EVENTS = "*events"
EVENT_TYPES = ("instance.created", "instance.updated", "instance.deleted",
               "plan.created", "plan.updated", "plan.deleted")
REDACTED = "[redacted]"


class Position(NamedTuple):
    """A place in a feed: the writing transaction's id (0 on SQLite) and the
    row's number. Written `p<seq>` (SQLite) or `p<xid>.<seq>` (PostgreSQL)."""
    xid: int
    seq: int

    def __str__(self):
        return f"p{self.seq}" if not self.xid else f"p{self.xid}.{self.seq}"


POSITION = re.compile(r"p(\d{1,18})(?:\.(\d{1,18}))?")
START = Position(0, 0)


def parse_position(text):
    """The Position a `p...` token names, or None when it is not one."""
    found = POSITION.fullmatch(text)
    if found is None:
        return None
    first, second = found.groups()
    return Position(0, int(first)) if second is None else Position(int(first), int(second))


class Event(Model):
    """One change of an instance or a plan (the table is made by `create`)."""
    id = CanonicalUUIDField(primary_key=True)
    type = TextField()
    at = UTCDateTimeField()
    instance_id = CanonicalUUIDField()
    plan_id = CanonicalUUIDField(null=True)
    site_id = CanonicalUUIDField()
    labels = ObjectField()
    data = TextField(null=True)

    class Meta:
        database = db
        table_name = "event"


# -- the tables, columns, indexes and triggers ----------------------------------------

SQLITE_TABLES = [
    """CREATE TABLE IF NOT EXISTS feed_counter (
        id INTEGER PRIMARY KEY, value INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO feed_counter (id, value) "
    "SELECT 1, coalesce(max(fleet_seq), 0) FROM instance_log",
    """CREATE TABLE IF NOT EXISTS event (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, at TEXT NOT NULL,
        instance_id TEXT NOT NULL, plan_id TEXT, site_id TEXT NOT NULL,
        labels TEXT NOT NULL, data TEXT)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS instance_log_fleet_seq ON instance_log (fleet_seq)",
    "CREATE INDEX IF NOT EXISTS event_instance ON event (instance_id, position)",
    "CREATE INDEX IF NOT EXISTS event_site ON event (site_id, position)",
    "CREATE INDEX IF NOT EXISTS event_type ON event (type, position)",
    "CREATE INDEX IF NOT EXISTS event_at ON event (at)",
    # How far the event purge has gone (events_purged): an older cursor is 410.
    "CREATE TABLE IF NOT EXISTS feed_mark (name TEXT PRIMARY KEY, xid TEXT NOT NULL, "
    "seq BIGINT NOT NULL)",
]
POSTGRES_TABLES = [
    "CREATE SEQUENCE IF NOT EXISTS instance_log_fleet_seq",
    # Rows already there take their numbers and the migrating transaction's
    # id from the defaults as the columns are added.
    "ALTER TABLE instance_log ADD COLUMN IF NOT EXISTS fleet_seq bigint NOT NULL "
    "DEFAULT nextval('instance_log_fleet_seq')",
    "ALTER TABLE instance_log ADD COLUMN IF NOT EXISTS fleet_xid xid8 NOT NULL "
    "DEFAULT pg_current_xact_id()",
    "CREATE INDEX IF NOT EXISTS instance_log_fleet_position ON instance_log "
    "(fleet_xid, fleet_seq)",
    """CREATE TABLE IF NOT EXISTS event (
        position bigserial PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        id uuid NOT NULL UNIQUE, type text NOT NULL, at timestamptz NOT NULL,
        instance_id uuid NOT NULL, plan_id uuid, site_id uuid NOT NULL,
        labels jsonb NOT NULL, data text)""",
    "CREATE INDEX IF NOT EXISTS event_xid_position ON event (xid, position)",
    "CREATE INDEX IF NOT EXISTS event_instance ON event (instance_id, xid, position)",
    "CREATE INDEX IF NOT EXISTS event_site ON event (site_id, xid, position)",
    "CREATE INDEX IF NOT EXISTS event_type ON event (type, xid, position)",
    "CREATE INDEX IF NOT EXISTS event_at ON event (at)",
    # How far the event purge has gone (events_purged): an older cursor is 410.
    "CREATE TABLE IF NOT EXISTS feed_mark (name TEXT PRIMARY KEY, xid TEXT NOT NULL, "
    "seq BIGINT NOT NULL)",
]
# The fleet log list's own indexes (newest first, by level, by type).
LOG_INDEXES = [
    "CREATE INDEX IF NOT EXISTS instance_log_created ON instance_log (created_at, id)",
    "CREATE INDEX IF NOT EXISTS instance_log_level_created ON instance_log "
    "(level, created_at, id)",
    "CREATE INDEX IF NOT EXISTS instance_log_type_created ON instance_log "
    "(log_type, created_at, id)",
]


def add_log_positions():
    """SQLite: the fleet_seq column of the logs, numbered in rowid order for
    the rows already there (a database migrated to version 11)."""
    if not is_sqlite():
        return
    names = {column.name for column in db.get_columns("instance_log")}
    if "fleet_seq" not in names:
        db.execute_sql("ALTER TABLE instance_log ADD COLUMN fleet_seq INTEGER")
        db.execute_sql("UPDATE instance_log SET fleet_seq = rowid")
        # The log trigger now sets fleet_seq too: made again.
        db.execute_sql("DROP TRIGGER IF EXISTS instance_log_counted")


def create():
    """Whatever is missing of the feeds' columns, tables, indexes and
    triggers, in the caller's transaction (migrations.create_tables). The
    event triggers are made again each time, from the output schemas of
    the day (a migration that adds a field remakes them)."""
    add_log_positions()
    for statement in (SQLITE_TABLES if is_sqlite() else POSTGRES_TABLES) + LOG_INDEXES:
        db.execute_sql(statement)
    for statement in event_triggers():
        db.execute_sql(statement)


def event_triggers():
    from models import Instance, InstancePlan
    from schemas import InstanceSchema, PlanSchema

    instance = representation(Instance, InstanceSchema, "NEW")
    plan = representation(InstancePlan, PlanSchema, "NEW")
    of_instance = "(SELECT {column} FROM instance WHERE id = {row}.instance_id)"
    rows = {
        # trigger name: (table, operation, condition, type, row, plan id, site, labels, data)
        "event_instance_created": ("instance", "INSERT", None, "instance.created", "NEW",
                                   "NULL", "NEW.site_id", "NEW.labels", instance),
        "event_instance_updated": ("instance", "UPDATE", "NEW.updated_at <> OLD.updated_at",
                                   "instance.updated", "NEW", "NULL", "NEW.site_id",
                                   "NEW.labels", instance),
        "event_instance_deleted": ("instance", "DELETE", None, "instance.deleted", "OLD",
                                   "NULL", "OLD.site_id", "OLD.labels", "NULL"),
        "event_plan_created": ("instance_plan", "INSERT", None, "plan.created", "NEW",
                               "NEW.id", of_instance.format(column="site_id", row="NEW"),
                               of_instance.format(column="labels", row="NEW"), plan),
        "event_plan_updated": ("instance_plan", "UPDATE", "NEW.updated_at <> OLD.updated_at",
                               "plan.updated", "NEW", "NEW.id",
                               of_instance.format(column="site_id", row="NEW"),
                               of_instance.format(column="labels", row="NEW"), plan),
        # A plan deleted with its instance (the cascade) has no instance
        # left to find: that deletion is the instance's event alone.
        "event_plan_deleted": ("instance_plan", "DELETE",
                               "EXISTS (SELECT 1 FROM instance WHERE id = OLD.instance_id)",
                               "plan.deleted", "OLD", "OLD.id",
                               of_instance.format(column="site_id", row="OLD"),
                               of_instance.format(column="labels", row="OLD"), "NULL"),
    }
    statements = []
    for name, (table, operation, condition, kind, row, plan_id, site, labels, data) in \
            rows.items():
        instance_id = f"{row}.id" if table == "instance" else f"{row}.instance_id"
        at = f"{row}.updated_at" if operation != "DELETE" else NOW[is_sqlite()]
        values = (f"{NEW_ID[is_sqlite()]}, '{kind}', {at}, {instance_id}, {plan_id}, "
                  f"{site}, {labels}, {data}")
        insert = ("INSERT INTO event (id, type, at, instance_id, plan_id, site_id, labels, "
                  f"data) VALUES ({values})")
        if is_sqlite():
            statements.append(f"DROP TRIGGER IF EXISTS {name}")
            when = f" WHEN {condition}" if condition else ""
            statements.append(f"CREATE TRIGGER {name} AFTER {operation} ON {table} "
                              f"FOR EACH ROW{when} BEGIN {insert}; END")
        else:
            statements.append(
                f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {insert}; RETURN NULL; END $$")
            statements.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            when = f" WHEN ({condition})" if condition and operation != "DELETE" else ""
            body = f"EXECUTE FUNCTION {name}()"
            if condition and operation == "DELETE":
                # PostgreSQL allows no subquery in WHEN: the test is made
                # in the function.
                statements[-2] = (
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                    f"AS $$ BEGIN IF {condition} THEN {insert}; END IF; RETURN NULL; END $$")
            statements.append(f"CREATE TRIGGER {name} AFTER {operation} ON {table} "
                              f"FOR EACH ROW{when} {body}")
    if not is_sqlite():
        # Followers in every process wake when events commit (storage.tail).
        from log_triggers import LOG_CHANNEL
        channel = LOG_CHANNEL.format(schema="TG_TABLE_SCHEMA")
        statements += [
            f"CREATE OR REPLACE FUNCTION event_notified() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN PERFORM pg_notify({channel}, '{EVENTS}'); RETURN NULL; END $$",
            "DROP TRIGGER IF EXISTS event_notified ON event",
            "CREATE TRIGGER event_notified AFTER INSERT ON event FOR EACH STATEMENT "
            "EXECUTE FUNCTION event_notified()"]
    return statements


# Now, as each engine stores a timestamp (storage.fields.UTCDateTimeField).
NOW = {True: "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'", False: "clock_timestamp()"}
# A UUIDv7 made in SQL: the millisecond clock, version 7, variant 10, random bits.
NEW_ID = {
    True: "(SELECT substr(t, 1, 8) || '-' || substr(t, 9, 4) || '-7' || substr(r, 1, 3) || '-'"
          " || substr('89ab', 1 + abs(random()) % 4, 1) || substr(r, 4, 3) || '-'"
          " || substr(r, 7, 12) FROM (SELECT printf('%012x', CAST(unixepoch('subsec') * 1000"
          " AS INTEGER)) AS t, lower(hex(randomblob(9))) AS r))",
    False: "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
           "substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) "
           "FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid",
}


def representation(model, schema, row):
    """SQL: the JSON text of `row` (NEW or OLD) of `model` as `schema`
    writes it, its members in order, environment variable values redacted."""
    fields = {field.column_name: field for field in model._meta.sorted_fields}
    members = []
    for key, column in schema.wire():
        field = getattr(fields[column], "rel_field", fields[column])
        value = f"{row}.{column}"
        if column == "environment_variables":
            value = (f"(SELECT json_group_object(key, '{REDACTED}') FROM json_each({value}))"
                     if is_sqlite() else
                     f"(SELECT coalesce(json_object_agg(key, '{REDACTED}'), '{{}}'::json) "
                     f"FROM jsonb_each({value}))")
        elif isinstance(field, ObjectField):
            value = f"json({value})" if is_sqlite() else value
        elif isinstance(field, UTCDateTimeField):
            value = (f"replace({value}, ' ', 'T') || '+00:00'" if is_sqlite() else
                     f"to_char({value} AT TIME ZONE 'UTC', "
                     "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")
        members += [f"'{key}'", value]
    return (f"json_object({', '.join(members)})" if is_sqlite()
            else f"json_build_object({', '.join(members)})::text")


def versions(log_counts):
    """For the SQLite watcher (storage.tail): `log_counts(ids)` of the
    instances waited on, and the feeds' last numbers under their keys."""
    def read(keys):
        ids = [key for key in keys if not key.startswith("*")]
        found = log_counts(ids) if ids else {}
        if len(ids) < len(keys):
            last_log, last_event = db.execute_sql(
                "SELECT (SELECT value FROM feed_counter WHERE id = 1), "
                "(SELECT max(position) FROM event)").fetchone()
            found[FLEET_LOGS], found[EVENTS] = last_log, last_event or 0
        return found
    return read


class FeedMark(Model):
    """How far a purge has gone in a feed (the table is made by `create`)."""
    name = TextField(primary_key=True)
    xid = TextField()
    seq = BigIntegerField()

    class Meta:
        database = db
        table_name = "feed_mark"


PURGED = "events_purged"


def purged_through():
    """The Position of the last event the purge deleted, or None."""
    mark = FeedMark.get_or_none(FeedMark.name == PURGED)
    return None if mark is None else Position(int(mark.xid), mark.seq)


def mark_purged(position):
    """Record, in the purging transaction, that the events up to `position`
    are gone; the mark never moves back."""
    known = purged_through()
    if known is not None and known >= position:
        return
    FeedMark.insert(name=PURGED, xid=str(position.xid), seq=position.seq).on_conflict(
        conflict_target=[FeedMark.name],
        update={FeedMark.xid: str(position.xid), FeedMark.seq: position.seq}).execute()


def hold_back_age():
    """PostgreSQL: how long (seconds) the oldest transaction of the cluster
    that holds a transaction id has been open, and its process id: while it
    is open, the feeds hold back every row written after it began (see
    docs/operations.md). (0.0, None) on SQLite or when there is none. For
    /metrics (instance_api_feed_hold_back_seconds)."""
    if is_sqlite():
        return 0.0, None
    found = db.execute_sql(
        "SELECT extract(epoch FROM clock_timestamp() - xact_start), pid "
        "FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
        "ORDER BY xact_start LIMIT 1").fetchone()
    return (0.0, None) if found is None else (float(found[0]), found[1])
