"""Storage: the database proxy, the three tables and their closed sets.

Models hold storage facts (types, nullability, indexes, foreign keys) and the
small queries the routes need. Input rules live in schemas.py only.
"""
import os
import threading
import time
import uuid
from datetime import datetime, timezone

import orjson
from peewee import (
    DatabaseProxy, DateTimeField, ForeignKeyField, IntegerField, JSONField, Model, TextField,
    UUIDField,
)
from playhouse.pool import PooledSqliteDatabase

db = DatabaseProxy()

# Closed sets, in the order the contract lists them. LOG_LEVELS is also the
# severity order.
INSTANCE_TYPES = ("ubuntu", "browser", "windows")
INSTANCE_STATUSES = (
    "pending", "starting", "running", "paused", "stopping", "stopped",
    "terminated", "error",
)
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
PLAN_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")

# WAL lets readers run beside the one writer; NORMAL skips the fsync on each
# commit in WAL mode (a crash of the process loses nothing committed);
# foreign_keys is off by default in SQLite and ON DELETE CASCADE needs it.
# The busy timeout is passed to connect(), so it is in force before WAL is set.
SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("cache_size", -4096),      # KiB per connection: bounded memory per thread
    ("temp_store", "memory"),
)


def open_sqlite(path, busy_timeout=5.0):
    """A pooled SQLite database: each request borrows a connection and gives
    it back at teardown, so pragmas run once per connection, not per request."""
    return PooledSqliteDatabase(
        path, pragmas=SQLITE_PRAGMAS, timeout=busy_timeout,
        max_connections=None, check_same_thread=False,
    )


_uuid7_lock = threading.Lock()
_uuid7_last = 0


def uuid7():
    """A time-ordered UUID (RFC 9562, version 7), monotonic within a process.

    The 48-bit millisecond clock leads, so new rows append to the primary-key
    index and ids sort by creation. When two ids fall in one millisecond (or
    the clock steps back) the 122 free bits are bumped by one instead, which
    keeps them strictly increasing.
    """
    global _uuid7_last
    candidate = (time.time_ns() // 1_000_000) << 74 | int.from_bytes(os.urandom(10)) >> 6
    with _uuid7_lock:
        value = _uuid7_last = max(candidate, _uuid7_last + 1)
    ms, rand_a, rand_b = value >> 74, (value >> 62) & 0xFFF, value & ((1 << 62) - 1)
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTimeField(DateTimeField):
    """Aware UTC datetimes, stored as fixed-width naive UTC text.

    Fixed width keeps text order equal to time order, so indexes sort by time;
    fromisoformat is much cheaper than peewee's format guessing on every row.
    """

    def db_value(self, value):
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
            return value.isoformat(" ", "microseconds")
        return value

    def python_value(self, value):
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def _dumps(value):
    return orjson.dumps(value).decode()


class ObjectField(JSONField):
    """A JSON object column (TEXT on SQLite, JSONB on PostgreSQL)."""

    def __init__(self, **kwargs):
        super().__init__(dumps=_dumps, loads=orjson.loads, default=dict, **kwargs)


class BaseModel(Model):
    id = UUIDField(primary_key=True, default=uuid7)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        database = db
        legacy_table_names = False


def same(stored, sent):
    """Equal as JSON values: Python's `True == 1` and `1 == 1.0` would make a
    PUT of {"flag": true} over {"flag": 1} look like no change."""
    return orjson.dumps(stored, option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)


class EditableModel(BaseModel):
    """A row that can change after creation, so it carries updated_at."""
    updated_at = UTCDateTimeField()

    def save(self, *args, **kwargs):
        if self.updated_at is None:
            self.updated_at = self.created_at
        return super().save(*args, **kwargs)

    def apply(self, changes):
        """Store the fields of `changes` that differ; updated_at moves only
        when something did (PUT {} and no-op writes leave it as it was)."""
        changed = [name for name, value in changes.items() if not same(getattr(self, name), value)]
        if changed:
            for name in changed:
                setattr(self, name, changes[name])
            self.updated_at = utcnow()
            self.save(only=[*changed, "updated_at"])
        return self


class Instance(EditableModel):
    site_id = UUIDField()
    user_id = UUIDField()
    name = TextField()
    instance_type = TextField()
    status = TextField()
    agent_id = UUIDField(null=True)
    configuration = ObjectField()
    environment_variables = ObjectField()

    class Meta:
        # Each list filter with the newest-first order in one index, so a
        # filtered page and its count are index range scans.
        indexes = (
            (("created_at", "id"), False),
            (("site_id", "created_at", "id"), False),
            (("status", "created_at", "id"), False),
            (("site_id", "status", "created_at", "id"), False),
        )


class InstanceLog(BaseModel):
    # The composite indexes below start with instance_id, so the foreign key
    # needs no index of its own (cascade deletes use them too).
    instance = ForeignKeyField(Instance, on_delete="CASCADE", index=False, backref="logs")
    log_type = TextField()
    level = TextField()
    message = TextField()
    details = ObjectField()

    class Meta:
        table_name = "instance_log"
        indexes = (
            (("instance", "created_at", "id"), False),
            (("instance", "log_type", "created_at", "id"), False),
            (("instance", "level", "created_at", "id"), False),
        )


class InstancePlan(EditableModel):
    instance = ForeignKeyField(Instance, on_delete="CASCADE", index=False, backref="plans")
    title = TextField()
    description = TextField(null=True)
    plan_type = TextField()
    status = TextField()
    priority = IntegerField()
    instructions = TextField(null=True)

    class Meta:
        table_name = "instance_plan"
        indexes = (
            (("instance", "created_at", "id"), False),
            (("instance", "status", "created_at", "id"), False),
            (("instance", "plan_type", "created_at", "id"), False),
        )


MODELS = (Instance, InstanceLog, InstancePlan)


def create_tables():
    """Create missing tables and indexes; a no-op on an existing file."""
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
