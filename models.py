"""The tables: instances, their logs and plans, idempotency keys and the
schema version, with their closed sets, indexes and the small queries the
routes need.

Models hold storage facts (types, nullability, indexes, foreign keys); input
rules live in schemas.py only. Not here: opening either engine, the column
types, the write and read paths (storage/), and migrations (migrations.py).
"""
import uuid
from datetime import timedelta
from functools import partial

import orjson
from peewee import (
    SQL, Case, EnclosedNodeList, ForeignKeyField, IntegerField, IntegrityError, Model,
    TextField, fn,
)

import feeds
from log_triggers import LOG_CHANNEL
from storage import db
from storage.engines import (
    for_write, is_sqlite, log_watcher, plus_seconds,
)
from storage.fields import CanonicalUUIDField, ObjectField, UTCDateTimeField, utcnow
from storage.ids import id_time_ms, new_id
from storage.reads import IndexedBy, Slot, compiled
from storage.writes import ADD_CHUNK, write

# Closed sets, in the order the contract lists them. LOG_LEVELS is also the
# severity order.
INSTANCE_TYPES = ("ubuntu", "browser", "windows")
INSTANCE_STATUSES = (
    "pending", "starting", "running", "paused", "stopping", "stopped",
    "terminated", "error",
)
# CONTRACT 4.1: active instances can go idle; paused ones only expire;
# ended ones are left alone by the reaper (jobs/reaper.py).
ACTIVE_STATUSES = ("pending", "starting", "running", "stopping")
ENDED_STATUSES = ("stopped", "terminated", "error")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
PLAN_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
PLAN_DONE = ("completed", "failed", "cancelled")


class BaseModel(Model):
    id = CanonicalUUIDField(primary_key=True, default=new_id)
    created_at = UTCDateTimeField(default=utcnow)

    # Closed-set columns that sort in the order of their set (severity,
    # lifecycle) rather than alphabetically.
    RANKED = {}
    # The index that serves sorting the whole table by a column (see
    # read_in_order_of).
    SORT_INDEXES = {}
    # Columns the database fills in as a row is inserted (a trigger's).
    ASSIGNED = frozenset()

    class Meta:
        database = db
        legacy_table_names = False

    @classmethod
    def add(cls, rows, **shared):
        """Insert `rows` (dicts by column name, each with the values in
        `shared`), all or none, with the defaults of absent columns, and
        return them complete. A write of its own, or part of the caller's.

        A few rows join the inserts other threads are making
        (Writer.combined); more than ADD_CHUNK are a transaction of their
        own, ADD_CHUNK rows per INSERT.

        The complete rows are made under the write lock: made before it, each
        thread queued with a batch held a second copy of its 1,000 rows, and
        the server's peak memory rose by 13 MB (batches at 32 connections)."""
        # A shared id (a batch's instance) as text once, not once per row to
        # bind it and again per row to write the response.
        shared = {name: str(value) if isinstance(value, uuid.UUID) else value
                  for name, value in shared.items()}
        if len(rows) <= ADD_CHUNK and not db.writer.held():
            return db.writer.combined(cls, rows, shared)
        with write(atomic=len(rows) > ADD_CHUNK):
            rows = cls.completed(rows, shared)
            for start in range(0, len(rows), ADD_CHUNK):
                cls.insert_rows(rows[start:start + ADD_CHUNK])
        return rows

    @classmethod
    def completed(cls, rows, shared):
        return [cls.complete({**cls._meta.get_default_dict(), **shared, **row}) for row in rows]

    @classmethod
    def insert_rows(cls, rows):
        """One multi-row INSERT, compiled once per row count (storage.reads.run).
        Row by row, SQLite gives up the GIL after every row, and the writer,
        holding the write lock, waits for it each time behind the threads
        that are parsing and serializing."""
        sql, params = compiled(("insert", cls, len(rows)), lambda: cls.insert_many([
            {field: Slot((index, field.column_name), field.db_value)
             for field in cls._meta.sorted_fields if field.name not in cls.ASSIGNED}
            for index in range(len(rows))]).returning().sql())
        # The values go row after row, each row's in the same order: bound
        # straight from the rows by the first row's Slots, rather than
        # through a dict of every value by (row, column) as `run` binds.
        row_slots = [(slot.name[1], slot.convert) for slot in params[:len(params) // len(rows)]]
        db.execute_sql(sql, [convert(row[name]) for row in rows for name, convert in row_slots])

    @classmethod
    def complete(cls, row):
        """Hook: fill in the columns of a new row that derive from others."""
        return row

    @classmethod
    def read_in_order_of(cls, sort):
        """The source a page of the whole, unfiltered list sorted by `sort`
        reads: on SQLite, the index made for that sort (SORT_INDEXES, by the
        first sort key) named outright. SQLite's planner (3.54) would rather
        sort the whole table than read that index in order and sort only
        rows with equal keys by the tie-breaks: at 100,000 instances a page
        took 15 ms that way against 0.06 ms through the index."""
        index = cls.SORT_INDEXES.get(sort[0][0]) if sort else None
        return IndexedBy(cls, index) if index and is_sqlite() else cls

    @classmethod
    def sort_key(cls, name):
        column = getattr(cls, name)
        ranks = cls.RANKED.get(name)
        if ranks is None:
            return column
        # Literals, not parameters: an index on this expression (Instance)
        # serves only a query that writes it the same way. The values come
        # from the closed sets above.
        return Case(column, [(SQL(f"'{value}'"), SQL(str(rank)))
                             for rank, value in enumerate(ranks)])


def same(stored, sent):
    """Equal as JSON values: Python's `True == 1` and `1 == 1.0` would make a
    PUT of {"flag": true} over {"flag": 1} look like no change."""
    return orjson.dumps(stored, option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)


class EditableModel(BaseModel):
    """A row that can change after creation, so it carries updated_at."""
    updated_at = UTCDateTimeField()

    @classmethod
    def complete(cls, row):
        row["updated_at"] = row["created_at"]
        return row

    def save(self, *args, **kwargs):
        if self.updated_at is None:  # a new row
            self.updated_at = self.created_at
            self.changed(self._meta.fields, self.created_at)
        return super().save(*args, **kwargs)

    def apply(self, changes):
        """Store the fields of `changes` that differ; updated_at moves only
        when something did (PUT {} and no-op writes leave it as it was)."""
        changed = [name for name, value in changes.items() if not same(getattr(self, name), value)]
        if changed:
            for name in changed:
                setattr(self, name, changes[name])
            self.updated_at = utcnow()
            derived = self.changed(changed, self.updated_at)
            self.save(only=[*changed, *derived, "updated_at"])
        return self

    def changed(self, names, now):
        """Hook: fields `names` were just set at `now`; returns the names of
        the fields the server derived from them."""
        return ()


class Instance(EditableModel):
    RANKED = {"status": INSTANCE_STATUSES}
    SORT_INDEXES = {"name": "instance_name", "updated_at": "instance_updated_at",
                    "status": "instance_status_rank",
                    "last_activity_at": "instance_last_activity_at"}

    site_id = CanonicalUUIDField()
    user_id = CanonicalUUIDField()
    name = TextField()
    instance_type = TextField()
    status = TextField()
    agent_id = CanonicalUUIDField(null=True)
    configuration = ObjectField()
    environment_variables = ObjectField()
    # Found through indexes of their own (search.py). The database default
    # gives the rows of an older schema none (migration 7).
    labels = ObjectField(constraints=[SQL("DEFAULT '{}'")])
    # How many logs the instance has, kept in the transaction that adds them
    # (logs are never deleted alone), so an unfiltered log list's
    # X-Total-Count costs one row read instead of counting 100,000 index
    # entries. Not part of the API's representation.
    log_count = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    # The seq of the instance's newest log ever appended: log_count until a
    # purge deletes some (jobs/purge.py), so seq never repeats and the SQLite
    # log watcher's version never goes back. Not part of the representation.
    log_seq = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    # CONTRACT 4.1. last_activity_at moves at most once a second (ACTIVITY).
    idle_timeout_s = IntegerField(null=True)
    expires_at = UTCDateTimeField(null=True)
    status_reason = TextField(null=True)
    last_activity_at = UTCDateTimeField()
    # When the reaper ends it as idle: last_activity_at + idle_timeout_s
    # while the status is active and a timeout is set, else NULL. Kept with
    # last_activity_at, so that the reaper reads the due instances from an
    # index (instance_idle_deadline) and no other row. Not part of the
    # representation.
    idle_deadline = UTCDateTimeField(null=True)

    class Meta:
        # Each list filter with the newest-first order in one index, so a
        # filtered page and its count are index range scans.
        indexes = (
            (("created_at", "id"), False),
            (("site_id", "created_at", "id"), False),
            (("status", "created_at", "id"), False),
            (("site_id", "status", "created_at", "id"), False),
            (("user_id", "created_at", "id"), False),
            (("agent_id", "created_at", "id"), False),
            (("instance_type", "created_at", "id"), False),
            # Sorting the whole list (CONTRACT 2.1) reads one of these in
            # order and stops at the page's end, rather than sorting every
            # row; the status order is its lifecycle rank, below.
            (("name",), False),
            (("updated_at",), False),
            # sort=last_activity_at, idle_for, and the ended instances the
            # purge looks for (INSTANCES_ENDED_RETENTION).
            (("last_activity_at",), False),
            # expires_before.
            (("expires_at",), False),
        )

    @classmethod
    def complete(cls, row):
        row = super().complete(row)
        for name in ("idle_timeout_s", "expires_at", "status_reason"):
            row.setdefault(name, None)   # nullable, without a default of their own
        row["last_activity_at"] = row["created_at"]
        row["idle_deadline"] = idle_deadline(row["status"], row.get("idle_timeout_s"),
                                             row["created_at"])
        return row

    def apply(self, changes):
        """As EditableModel.apply, and (CONTRACT 4.1) a new status without a
        status_reason clears the reason; the write counts as activity."""
        if "status" in changes and "status_reason" not in changes \
                and changes["status"] != self.status:
            changes = {**changes, "status_reason": None}
        before = self.updated_at
        super().apply(changes)
        if self.updated_at == before:
            self.touch(utcnow())
        return self

    def changed(self, names, now):
        self.last_activity_at = now
        self.idle_deadline = idle_deadline(self.status, self.idle_timeout_s, now)
        return ("last_activity_at", "idle_deadline")

    def touch(self, now):
        """Record activity at `now` unless it was recorded less than a second
        ago (CONTRACT 4.7); inside the caller's write, the row locked."""
        if self.last_activity_at is None or self.last_activity_at <= now - ACTIVITY_STEP:
            self.last_activity_at = now
            self.idle_deadline = idle_deadline(self.status, self.idle_timeout_s, now)
            self.save(only=["last_activity_at", "idle_deadline"])

    @classmethod
    def record_activity(cls, instance_id, now=None):
        """One statement: the instance's last_activity_at is `now` unless it
        was moved less than a second ago (a plan written, a heartbeat). Part
        of the caller's write, so of its transaction."""
        now = now or utcnow()
        cls.update(last_activity_at=now, idle_deadline=Case(
            None, [(cls.idle_deadline.is_null(), None)],
            plus_seconds(cls.last_activity_at.db_value(now), cls.idle_timeout_s))
        ).where(cls.id == instance_id, cls.last_activity_at <= now - ACTIVITY_STEP).execute()

    @classmethod
    def log_counts(cls, ids):
        """{id: log_seq} of the instances `ids` that exist: the versions the
        SQLite log watcher compares (storage.tail), in one query. log_seq,
        not log_count: a purge lowers the count, and a purge and an append
        between two looks would leave the count where it was."""
        return {str(key): count for key, count in
                cls.select(cls.id, cls.log_seq).where(cls.id.in_(ids)).tuples()}

    @classmethod
    def heartbeat(cls, instance_id):
        """(status, status_reason) of the instance, None when there is none;
        its activity recorded unless it has ended (CONTRACT 4.7: a heartbeat
        for an ended instance changes nothing). Inside the caller's write."""
        found = for_write(cls.select(cls.status, cls.status_reason)
                          .where(cls.id == instance_id)).tuples().first()
        if found is not None and found[0] not in ENDED_STATUSES:
            cls.record_activity(instance_id)
        return found

    def delete_instance(self, *args, **kwargs):
        """Delete the instance (its logs and plans cascade); its live tails
        answer 404 once that has committed."""
        deleted = super().delete_instance(*args, **kwargs)
        db.writer.after_commit(partial(db.tail.touched, str(self.id)))
        return deleted


# In parentheses of its own: PostgreSQL takes an expression in an index only so.
Instance.add_index(Instance.index(EnclosedNodeList([Instance.sort_key("status")]),
                                  name="instance_status_rank"))
# What the reaper reads (jobs/reaper.py): only instances with a deadline are
# in these, so a pass reads the due ones and stops. The conditions are
# literals, written as the reaper's queries write them (a partial index
# serves a query whose WHERE implies its own).
Instance.add_index(Instance.index(Instance.idle_deadline, name="instance_idle_deadline",
                                  where=Instance.idle_deadline.is_null(False)))
EXPIRING = SQL("status IN (" + ", ".join(f"'{status}'" for status in (*ACTIVE_STATUSES, "paused"))
               + ")")
Instance.add_index(Instance.index(Instance.expires_at, name="instance_expiring",
                                  where=(Instance.expires_at.is_null(False) & EXPIRING)))

# A write that finds last_activity_at younger than this leaves it (CONTRACT
# 4.1: it may trail the true time by at most 1 s). Logs are the hot path:
# an append records activity once a second per instance, not per log.
ACTIVITY_STEP = timedelta(seconds=1)


def idle_deadline(status, idle_timeout_s, last_activity_at):
    """When an instance in this state goes idle, or None for never."""
    if status not in ACTIVE_STATUSES or idle_timeout_s is None:
        return None
    return last_activity_at + timedelta(seconds=idle_timeout_s)


class InstanceLog(BaseModel):
    RANKED = {"level": LOG_LEVELS}
    ASSIGNED = frozenset({"seq"})
    # The fleet's log sorted by severity (/api/logs?sort=level) reads this
    # index in order, as the instance list does for status (read_in_order_of).
    SORT_INDEXES = {"level": "instance_log_level_rank"}

    # The composite indexes below start with instance_id, so the foreign key
    # needs no index of its own (cascade deletes use them too).
    instance = ForeignKeyField(Instance, on_delete="CASCADE", index=False, backref="logs")
    log_type = TextField()
    level = TextField()
    message = TextField()
    details = ObjectField()
    # The log's place in its instance's log in the order logs were committed
    # (1, 2, 3...: the instance's log_count once it is added), set by the
    # database in the appending transaction (log_triggers.py). The `after`
    # cursor runs along it. NULL only within the INSERT statement on SQLite,
    # or for a row that its statement's foreign key check then refuses. Not
    # part of the API's representation.
    seq = IntegerField(null=True)

    class Meta:
        table_name = "instance_log"
        indexes = (
            (("instance", "created_at", "id"), False),
            (("instance", "log_type", "created_at", "id"), False),
            (("instance", "level", "created_at", "id"), False),
            (("instance", "seq"), True),
        )

    @classmethod
    def append(cls, instance_id, entries):
        """Insert logs of one instance, all or none; None when there is no
        such instance (the foreign key refuses them). Their instance's
        log_count and their seq are set in the same statement (log_triggers.py);
        the instance's live tails in this process wake once it commits."""
        try:
            logs = cls.add(entries, instance_id=instance_id)
        except IntegrityError as exc:
            if "foreign key" in str(exc).lower():
                return None
            raise
        db.writer.after_commit(partial(db.tail.touched, str(instance_id)))
        return logs

    @classmethod
    def was_purged(cls, instance_id, log_id):
        """Whether `log_id` (a UUID) names a log of this instance that the
        purge deleted (CONTRACT 4.2: its cursor is 410, not 422). Ids are
        UUIDv7, in the order they were made: a purge deletes an instance's
        oldest logs, so a purged id lies between the instance's own id (made
        before any of its logs) and its oldest log kept, and some of its
        logs were deleted (log_seq past log_count; logs are deleted with
        their instance otherwise). Any other id never named one of its logs."""
        if id_time_ms(log_id) is None:
            return False
        found = Instance.select(Instance.log_count, Instance.log_seq).where(
            Instance.id == instance_id).tuples().first()
        if found is None or found[0] == found[1]:
            return False
        oldest = (cls.select(cls.id).where(cls.instance == instance_id)
                  .order_by(cls.seq).limit(1).scalar())
        return instance_id < log_id and (oldest is None or log_id < oldest)


InstanceLog.add_index(InstanceLog.index(EnclosedNodeList([InstanceLog.sort_key("level")]),
                                        name="instance_log_level_rank"))


def follow_logs(max_waits):
    """Let up to `max_waits` requests of this process wait for an
    instance's next log (storage.tail), woken by the logs of every process."""
    db.tail.configure(max_waits, log_watcher(
        feeds.versions(Instance.log_counts), LOG_CHANNEL.format(schema="current_schema()")))


class InstancePlan(EditableModel):
    RANKED = {"status": PLAN_STATUSES}

    instance = ForeignKeyField(Instance, on_delete="CASCADE", index=False, backref="plans")
    # Deleting a parent detaches its children (see routes/plans.py); SET NULL
    # is the database's backstop for the same rule.
    parent = ForeignKeyField("self", null=True, on_delete="SET NULL", index=False,
                             backref="children")
    title = TextField()
    description = TextField(null=True)
    plan_type = TextField()
    status = TextField()
    priority = IntegerField()
    instructions = TextField(null=True)
    started_at = UTCDateTimeField(null=True)
    completed_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "instance_plan"
        indexes = (
            (("instance", "created_at", "id"), False),
            (("instance", "status", "created_at", "id"), False),
            (("instance", "plan_type", "created_at", "id"), False),
            # Leads with parent_id: the parent_id filter and the lookup of a
            # deleted parent's children both use it.
            (("parent", "created_at", "id"), False),
        )

    def changed(self, names, now):
        """started_at is the first move to in_progress; completed_at the last
        move to a final status, cleared when the plan is reopened."""
        if "status" not in names:
            return ()
        if self.status == "in_progress" and self.started_at is None:
            self.started_at = now
        self.completed_at = now if self.status in PLAN_DONE else None
        return ("started_at", "completed_at")

    def detach_children(self):
        """Make this plan's children top-level plans (before it is deleted)."""
        InstancePlan.update(parent=None, updated_at=utcnow()).where(
            InstancePlan.parent == self.id).execute()

    @staticmethod
    def ancestry(instance_id, parent_id, plan_id=None):
        """What making `parent_id` the parent of the plan `plan_id` (None:
        a new plan) would give, in one statement however deep the tree:
        None when there is no such plan on the instance `instance_id`, else
        (cycle, deepest): whether the plan is that parent or one of its
        ancestors, and how many ancestors the deepest plan of its subtree
        (the plan itself, or one of its descendants) would then have, past
        MAX_ANCESTORS counting stops. Both walks stop one level past the
        bound, so a cycle (which no write can make) could not loop them.
        The parent's row is locked (PostgreSQL) so that it is still there
        when the plan is written under it."""
        p = db.param
        lock = "" if is_sqlite() else " FOR UPDATE OF parent"
        row = db.execute_sql(
            # up: the parent and its ancestors; down: the plan and its
            # descendants, with their depth below it.
            "WITH RECURSIVE up(id, parent_id, depth) AS ("
            f" SELECT id, parent_id, 1 FROM instance_plan WHERE id = {p}"
            " UNION ALL SELECT plan.id, plan.parent_id, up.depth + 1"
            " FROM instance_plan AS plan JOIN up ON plan.id = up.parent_id"
            f" WHERE up.depth <= {MAX_ANCESTORS}),"
            " down(id, depth) AS ("
            f" SELECT id, 0 FROM instance_plan WHERE id = {p}"
            " UNION ALL SELECT plan.id, down.depth + 1"
            " FROM instance_plan AS plan JOIN down ON plan.parent_id = down.id"
            f" WHERE down.depth < {MAX_ANCESTORS})"
            f" SELECT (SELECT count(*) FROM up WHERE id = {p}),"
            " (SELECT count(*) FROM up) + (SELECT coalesce(max(depth), 0) FROM down)"
            f" FROM instance_plan AS parent WHERE parent.id = {p}"
            f" AND parent.instance_id = {p}{lock}",
            [InstancePlan.id.db_value(parent_id), InstancePlan.id.db_value(plan_id),
             InstancePlan.id.db_value(plan_id), InstancePlan.id.db_value(parent_id),
             InstancePlan.instance.db_value(instance_id)]).fetchone()
        return None if row is None else (row[0] > 0, row[1])


# How deep plans nest: a plan has at most this many ancestors. A bound
# keeps the check of a new parent (InstancePlan.ancestry) one short
# statement, and no agent's objectives and tasks come near it.
MAX_ANCESTORS = 100


class IdempotencyKey(Model):
    """The first successful response to a POST sent with an Idempotency-Key,
    kept so that a retry replays it instead of creating a second record."""
    key = TextField(primary_key=True)
    fingerprint = TextField()    # method, route and canonical JSON body
    status = IntegerField()
    body = TextField()
    location = TextField(null=True)
    created_at = UTCDateTimeField(default=utcnow, index=True)  # for the expiry sweep

    class Meta:
        database = db
        table_name = "idempotency_key"


class SchemaVersion(Model):
    """One row: the version of the tables in this database file."""
    version = IntegerField(primary_key=True)

    class Meta:
        database = db
        table_name = "schema_version"


MODELS = (Instance, InstanceLog, InstancePlan, IdempotencyKey, SchemaVersion)


def recount_logs():
    """Set every instance's log_count from its rows (migration, bulk seed)."""
    counted = (InstanceLog.select(fn.COUNT(InstanceLog.id))
               .where(InstanceLog.instance == Instance.id))
    Instance.update(log_count=counted).execute()
