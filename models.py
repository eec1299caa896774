"""Storage: the database proxy, the three tables and their closed sets.

Models hold storage facts (types, nullability, indexes, foreign keys) and the
small queries the routes need. Input rules live in schemas.py only.

Two engines: SQLite (one file, the default) and PostgreSQL (several server
processes and hosts). What differs between them is in this module only:
opening the database, timestamps and UUIDs as stored, case-insensitive
search, row locks and key locks, and how a read's raw column values become
JSON values.
"""
import os
import re
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cache
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
from peewee import (
    SQL, Case, DatabaseProxy, DateTimeField, EnclosedNodeList, Entity, ForeignKeyField,
    IntegerField, IntegrityError, JSONField, Model, Node, SqliteDatabase, TextField, UUIDField,
    fn,
)
from playhouse.cysqlite_ext import CySqliteDatabase
from playhouse.migrate import SchemaMigrator, migrate
from playhouse.pool import PooledPostgresqlDatabase

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
PLAN_DONE = ("completed", "failed", "cancelled")

# WAL lets readers run beside the one writer. synchronous=NORMAL skips the
# fsync on each commit in WAL mode: a crash of the process loses nothing
# committed, a power cut can lose the last transactions; FULL (setting
# SYNCHRONOUS) syncs every commit. foreign_keys is off by default in SQLite and
# ON DELETE CASCADE needs it. journal_size_limit truncates the -wal file back
# to 64 MiB after a checkpoint, so one burst does not leave it large for good.
SYNCHRONOUS = ("NORMAL", "FULL")


def sqlite_pragmas(synchronous="NORMAL", busy_timeout=5.0):
    return (
        # First, so that it is in force before WAL is set.
        ("busy_timeout", int(busy_timeout * 1000)),
        ("journal_mode", "wal"),
        ("synchronous", synchronous),
        ("foreign_keys", 1),
        ("journal_size_limit", 64 << 20),
        ("cache_size", -4096),      # KiB per connection: bounded memory per thread
        ("temp_store", "memory"),
    )


class WriterBusy(Exception):
    """The write lock could not be had within the busy timeout."""


# Database errors that mean "not now" rather than "bug". SQLite: the lock is
# held by another process, or the file cannot take writes (read-only, disk
# full, I/O). PostgreSQL: a lock wait past lock_timeout, a lost race, a
# server that is down or restarting.
UNAVAILABLE = ("locked", "busy", "readonly", "read-only", "disk is full", "disk i/o",
               "unable to open", "lock timeout", "could not serialize", "deadlock detected",
               "could not connect", "connection refused", "server closed the connection",
               "terminating connection", "connection failed")


def unavailable(exc):
    """Why the database cannot serve now, or None when `exc` is a fault.

    A failed COMMIT is rolled back by SQLite itself; peewee's own rollback
    then fails too and hides the cause in __context__, so the chain is read."""
    if isinstance(exc, WriterBusy):
        return f"{exc} (busy)"
    cause = exc
    for _ in range(5):
        if cause is None:
            break
        if any(word in str(cause).lower() for word in UNAVAILABLE):
            return str(cause)
        cause = cause.__context__
    return None


class Writer:
    """One writer at a time within the process.

    SQLite has one write lock per file. Threads that all ask SQLite for it
    race on its busy handler, which sleeps and retries, so under load some
    time out with "database is locked" while the lock was free half the time.
    Queueing on a process lock first hands it over in order; SQLite's busy
    timeout then only waits for other processes (a backup, a second server).
    Re-entrant, so a write inside a write (a POST with an Idempotency-Key)
    nests as a savepoint.

    A write of one statement needs no transaction of its own (`atomic`
    false): each statement is atomic on both engines, and BEGIN and COMMIT
    would be two more statements, each giving up the GIL twice on SQLite.
    Inside another write it is part of that write's transaction.
    """

    def __init__(self, timeout):
        self.timeout = timeout
        self.lock = threading.RLock()
        self.owner = None
        # Inserts waiting for the lock (`combined`), and the condition their
        # threads wait on: for the lock to come free, or for a holder of it
        # to have stored their rows. The lock is let go under this condition
        # (`release`), so a thread that found it taken is already waiting
        # when it is told.
        self.queue = []
        self.inserted = threading.Condition(threading.Lock())

    @contextmanager
    def __call__(self, atomic=True):
        if not self.lock.acquire(timeout=self.timeout):
            raise WriterBusy(f"no write lock within {self.timeout:g} s")
        outer, self.owner = self.owner, threading.get_ident()
        try:
            if atomic:
                with db.atomic():
                    yield
            else:
                yield
        finally:
            self.owner = outer
            self.release()

    def release(self, stored=()):
        """Let go of the lock, after marking the `stored` tickets done."""
        with self.inserted:
            for ticket in stored:
                ticket.done = True
            self.lock.release()
            if stored or self.queue:
                self.inserted.notify_all()

    def held(self):
        """Whether this thread is inside a write."""
        return self.owner == threading.get_ident()

    def combined(self, model, rows, shared):
        """Insert `rows` of `model` (as BaseModel.add), together with the
        inserts that other threads queued meanwhile: group commit.

        A thread that finds the lock free takes it and inserts everything
        queued, a statement per model; the threads whose rows it took wait
        for it to finish, not for the lock. A single statement is short, but
        on SQLite its thread gives up the GIL and, under load, waits behind
        the other threads to get it back, holding the lock all the while: at
        one insert per statement, every write queued behind each such wait
        (README "Where the time goes"). Had the others queued on the lock
        itself, each would also have had to take it in turn, and wait for
        the GIL to do so, only to find its rows stored.

        A thread whose wait passes the timeout takes its insert back (503);
        if a holder has already taken it, it waits for the outcome instead."""
        ticket = Insert(model, rows, shared)
        deadline = time.monotonic() + self.timeout
        with self.inserted:
            self.queue.append(ticket)
            while not ticket.taken:
                if self.lock.acquire(blocking=False):
                    tickets, self.queue = self.queue, []
                    for taken in tickets:
                        taken.taken = True
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.queue.remove(ticket)
                    raise WriterBusy(f"no write lock within {self.timeout:g} s")
                self.inserted.wait(remaining)
            else:
                # Another holder of the lock took these rows: their outcome.
                self.inserted.wait_for(lambda: ticket.done)
                tickets = None
        if tickets is not None:
            try:
                insert_all(tickets)
            finally:
                self.release(stored=tickets)
        if ticket.error is not None:
            raise ticket.error
        return ticket.rows


class Insert:
    """Rows queued for Writer.combined, and what became of them: `error`
    stays set until they are stored, so a holder of the lock that stopped
    half-way leaves nobody believing their rows were written."""
    __slots__ = ("model", "rows", "shared", "taken", "done", "error")

    def __init__(self, model, rows, shared):
        self.model, self.rows, self.shared = model, rows, shared
        self.taken = self.done = False
        self.error = WriteInterrupted


class WriteInterrupted(Exception):
    """The thread inserting queued rows stopped before it reached them."""


def insert_all(tickets):
    """Each ticket's rows completed and inserted: the tickets of a model
    together, in statements of up to ADD_CHUNK rows that never split a
    ticket. When a shared statement breaks a constraint (a log of an
    instance deleted meanwhile), its tickets are tried one by one, so only
    the one at fault fails; any other error (a busy or full file) is every
    one's. Errors are kept on the tickets, to be raised in their threads."""
    statements, filling = [], {}   # model: (its statement being filled, its row count)
    for ticket in tickets:
        try:
            ticket.rows = ticket.model.completed(ticket.rows, ticket.shared)
        except Exception as exc:
            ticket.error = exc
            continue
        group, count = filling.get(ticket.model, (None, 0))
        if group is None or count + len(ticket.rows) > ADD_CHUNK:
            group, count = [], 0
            statements.append(group)
        group.append(ticket)
        filling[ticket.model] = group, count + len(ticket.rows)
    for group in statements:
        try:
            group[0].model.insert_rows([row for ticket in group for row in ticket.rows])
        except IntegrityError as exc:
            if len(group) == 1:
                group[0].error = exc
                continue
            for ticket in group:
                try:
                    ticket.model.insert_rows(ticket.rows)
                    ticket.error = None
                except IntegrityError as alone:
                    ticket.error = alone
        except Exception as exc:
            for ticket in group:
                ticket.error = exc
        else:
            for ticket in group:
                ticket.error = None


def open_database(target, busy_timeout=5.0, synchronous="NORMAL"):
    """The database named by `target`: a URL (sqlite:///PATH, where
    sqlite:////srv/x.db is absolute; postgresql://USER@HOST:PORT/DB) or a
    plain SQLite file path."""
    if target.startswith(("postgresql://", "postgres://")):
        return open_postgres(target, busy_timeout)
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///"):]
    elif "://" in target:
        raise ValueError(f"unsupported database URL {target.split('://')[0]}://...; use "
                         "sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return open_sqlite(target, busy_timeout, synchronous)


class ThreadSqliteDatabase(CySqliteDatabase):
    """SQLite with one connection per thread, kept open from one request to
    the next (waitress's threads live as long as the server): pragmas run
    once per connection, and a request borrows none, so takes no lock.

    The driver is cysqlite (peewee's playhouse.cysqlite_ext), not Python's
    sqlite3: sqlite3 gives up the GIL three times per statement (each step
    and the reset), cysqlite twice (it resets holding it). Under load each
    hand-off is a wait behind the other threads: at 8 connections a GET by
    id made 32 context switches with sqlite3, 22 with cysqlite, and served
    17% more requests (README "Where the time goes"). cysqlite's wheels
    also bring their own SQLite, whatever the system has.

    `release` ends a request; `close_all` closes every thread's connection
    (at shutdown, before a fork, between tests)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._opened, self._opened_lock = set(), threading.Lock()

    def _connect(self):
        conn = super()._connect()
        with self._opened_lock:
            self._opened.add(conn)
        return conn

    def _close(self, conn):
        with self._opened_lock:
            self._opened.discard(conn)
        super()._close(conn)

    def release(self):
        """Keep the connection; roll back what a failed request left open."""
        conn = self._state.conn
        if conn is not None and conn.in_transaction:
            conn.rollback()

    def close_all(self):
        with self._opened_lock:
            opened, self._opened = self._opened, set()
        for conn in opened:
            conn.close()
        # Each thread's state forgets its connection, closed above.
        self._state = type(self._state)()


class PooledPostgres(PooledPostgresqlDatabase):
    """PostgreSQL connections are shared out by a pool: a server has fewer
    sessions to give than a few processes of threads would keep."""

    def release(self):
        """Give the connection back to the pool (rolled back if need be)."""
        if not self.is_closed():
            self.close()


def open_sqlite(path, busy_timeout=5.0, synchronous="NORMAL"):
    """A SQLite database, a connection per thread (ThreadSqliteDatabase).

    Every transaction begins IMMEDIATE, taking the write lock up front: the
    writes that read first (If-Match, idempotency keys, parent checks) then
    cannot interleave, and no transaction has to upgrade a read lock, which
    in WAL mode fails at once instead of waiting for the busy timeout.
    """
    database = ThreadSqliteDatabase(
        path, pragmas=sqlite_pragmas(synchronous, busy_timeout), lock_type="IMMEDIATE",
        rank_functions=False,   # full-text ranking; nothing here searches that way
    )
    database.writer = Writer(busy_timeout)
    database.shapes = {}
    database.text_timestamps = True
    # SQLite's own lower() and LIKE fold ASCII only; `q` should find "Écran"
    # with "écran" too.
    database.register_function(_casefold, "casefold", 1, deterministic=True)
    return database


def open_postgres(url, busy_timeout=5.0):
    """A pooled PostgreSQL database (psycopg 3). Sessions run in UTC, and a
    write that waits on a row lock longer than the busy timeout fails, as a
    503 like SQLite's busy lock. Timestamps are TIMESTAMPTZ."""
    query = parse_qs(urlsplit(url).query)
    options = " ".join([*query.get("options", []), "-c timezone=UTC",
                        f"-c lock_timeout={int(busy_timeout * 1000)}"])
    database = PooledPostgres(
        url, prefer_psycopg3=True, max_connections=None, stale_timeout=300,
        field_types={"DATETIME": "TIMESTAMPTZ"}, options=options,
    )
    # Writers still queue in the process: appends to one busy instance all
    # lock its row, and waiting on a Python lock measured cheaper than
    # waiting on PostgreSQL's (bench/run.py --scaling, POST log, 2 workers,
    # one session: 466 req/s queued, 332-371 without).
    database.writer = Writer(busy_timeout)
    database.shapes, database.readers = {}, {}
    database.text_timestamps = False
    # jsonb keeps numbers as NUMERIC and writes 1e20 back as 100000000000000000000;
    # psycopg's default loader (json) would make that an int wider than 64
    # bits, which orjson cannot write. orjson reads it as the float it was.
    from psycopg.types.json import set_json_loads
    set_json_loads(orjson.loads)
    return database


def is_sqlite():
    return isinstance(db.obj, SqliteDatabase)


def for_write(query):
    """`query` locking its rows until the write transaction ends, where the
    engine has row locks (PostgreSQL). SQLite's IMMEDIATE transaction already
    holds the whole file."""
    return query.for_update() if db.for_update else query


def lock_key(text):
    """Serialize the transactions that use one key (an Idempotency-Key), across
    processes: a PostgreSQL advisory lock until the transaction ends. On
    SQLite the IMMEDIATE write lock already does it."""
    if not is_sqlite():
        db.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (text,))


def _casefold(text):
    return None if text is None else text.casefold()


def write(atomic=True):
    """The transaction every write runs in: the process's writer lock, then
    BEGIN IMMEDIATE (see Writer and open_sqlite); for a single statement,
    the lock alone."""
    return db.writer(atomic)


def contains_folded(field, folded):
    """`field` contains `folded` (a `fold`ed text, or a Slot for one), ignoring
    case: Unicode-aware on both engines; PostgreSQL's lower() follows the
    database's locale."""
    if is_sqlite():
        return fn.instr(fn.casefold(field), folded) > 0
    return fn.strpos(fn.lower(field), folded) > 0


def fold(text):
    """`text` folded as contains_folded folds the column."""
    return text.casefold() if is_sqlite() else text.lower()


_uuid7_lock = threading.Lock()
_uuid7_last = 0
# Random bytes for ids, drawn from the OS 4 KiB at a time: os.urandom is a
# system call, and each one gives up the GIL, which a batch of 1,000 logs
# did 1,000 times. A forked worker draws its own: sharing its parent's
# bytes, two workers could make the same id in the same millisecond.
_entropy = memoryview(b"")


def _draw_afresh():
    global _entropy
    _entropy = memoryview(b"")


os.register_at_fork(after_in_child=_draw_afresh)


def uuid7():
    """A time-ordered UUID (RFC 9562, version 7), monotonic within a process.

    The 48-bit millisecond clock leads, so new rows append to the primary-key
    index and ids sort by creation. When two ids fall in one millisecond (or
    the clock steps back) the 122 free bits are bumped by one instead, which
    keeps them strictly increasing.
    """
    return uuid.UUID(int=_uuid7_bits())


def new_id():
    """uuid7() as the API writes it (lower-case, dashed), made without the
    UUID object: a new row's id is bound and written out as text, and
    creating the object and turning it into text twice was a tenth of a
    batch of logs (CanonicalUUIDField.db_value takes such text as it is)."""
    digits = f"{_uuid7_bits():032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid7_bits():
    global _uuid7_last, _entropy
    now = time.time_ns() // 1_000_000
    with _uuid7_lock:
        if len(_entropy) < 10:
            _entropy = memoryview(os.urandom(4096))
        candidate = now << 74 | int.from_bytes(_entropy[:10]) >> 6
        _entropy = _entropy[10:]
        value = _uuid7_last = max(candidate, _uuid7_last + 1)
    ms, rand_a, rand_b = value >> 74, (value >> 62) & 0xFFF, value & ((1 << 62) - 1)
    return ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTimeField(DateTimeField):
    """Aware UTC datetimes: TIMESTAMPTZ on PostgreSQL; fixed-width naive UTC
    text on SQLite.

    Fixed width keeps text order equal to time order, so indexes sort by time;
    fromisoformat is much cheaper than peewee's format guessing on every row.
    """

    def db_value(self, value):
        if isinstance(value, datetime):
            value = (value.astimezone(timezone.utc) if value.tzinfo is not None
                     else value.replace(tzinfo=timezone.utc))
            if db.text_timestamps:
                return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def python_value(self, value):
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        if isinstance(value, datetime):
            return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None
                    else value.astimezone(timezone.utc))
        return value


def _dumps(value):
    # Keys sorted at every depth: the text is then the JSON the API writes
    # (schemas.JSONObject), and a read on SQLite passes it on as it is.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class ObjectField(JSONField):
    """A JSON object column (TEXT on SQLite, JSONB on PostgreSQL)."""

    def __init__(self, **kwargs):
        super().__init__(dumps=_dumps, loads=orjson.loads, default=dict, **kwargs)

    def db_value(self, value):
        # On SQLite, peewee would bind json(<text>), which parses orjson's
        # text again only to store the same text, and is an SQL expression
        # rather than a value a compiled INSERT can bind (models.run).
        if value is not None and not isinstance(value, Node) and is_sqlite():
            return self._dumps(value)
        return super().db_value(value)


class CanonicalUUIDField(UUIDField):
    """A UUID column: native on PostgreSQL; on SQLite the canonical text the
    API writes (36 characters, lower case) rather than peewee's 32 hex
    digits, so a read passes it on as stored. Reshaping the hex in SQL took
    five substr() and eight concatenations per value: 130 of the 200 µs of
    the statement behind a page of 50 instances (schema version 6).
    UUIDv7 text sorts the same with or without the dashes."""

    def db_value(self, value):
        if value is None or isinstance(value, Node) or not is_sqlite():
            return super().db_value(value)
        if type(value) is str and CANONICAL_UUID.fullmatch(value):
            return value   # new_id's text, or a UUID the API already wrote
        try:
            return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))
        except (TypeError, ValueError, AttributeError):
            return value   # as peewee: a value that is no UUID matches no row


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- query shapes compiled once, rows read as JSON values ------------------------

# Rows per INSERT statement (BaseModel.add): 100 rows of the widest table
# bind about 1,200 values, far below either engine's limit.
ADD_CHUNK = 100


class Slot(Node):
    """A value in a query shape (see `run`): a placeholder in the compiled
    SQL, bound to each run's value of the same name."""

    def __init__(self, name, convert=None):
        self.name, self.convert = name, convert

    def __sql__(self, ctx):
        # Keep the conversion peewee would apply here (the compared column's
        # db_value), to apply to each run's value instead.
        return ctx.value(Bound(self.name, self.convert or ctx.state.converter), converter=False)


class IndexedBy(Node):
    """SQLite: FROM `model` INDEXED BY `index`, the one index it may read."""

    def __init__(self, model, index):
        self.model, self.index = model, index

    def __sql__(self, ctx):
        return ctx.sql(self.model).literal(" INDEXED BY ").sql(Entity(self.index))


class Bound(NamedTuple):
    name: object
    convert: object


def run(shape, build, values):
    """Run the query `build()` makes, with Slots in place of `values` (by
    name), and return its cursor. peewee compiles a query's expression tree
    on every run, most of the cost of reading one row by id; the SQL of a
    query depends only on its shape, so it is compiled once per `shape` key."""
    sql, params = compiled(shape, lambda: build().sql())
    return db.execute_sql(sql, bind(params, values))


def compiled(shape, make):
    """The (sql, params) that `make()` gives for `shape`, made once."""
    found = db.shapes.get(shape)
    if found is None:
        found = db.shapes[shape] = make()
    return found


def bind(params, values):
    return [(param.convert(values[param.name]) if param.convert else values[param.name])
            if type(param) is Bound else param for param in params]


def representations(model, shape, build, values):
    """The rows of `model.select()` that `build()` makes (run as `run` runs
    it) as dicts of JSON values by column name: ids and timestamps as the
    API writes them, JSON objects as the stored text on SQLite (sorted when
    stored, so written out as it is), parsed on PostgreSQL. What the output
    schemas dump, without a model instance and typed values per row.

    On SQLite the rows come back as one JSON text that SQLite builds, in one
    step. Python's sqlite3 gives up the GIL for each row it steps to, and
    with the server's threads busy each of those costs a thread switch to
    get it back: read row by row, a page of 50 logs cost 5,300 µs of server
    CPU and 127 context switches per request; in one step, 3,200 µs and 47
    (wrk at 8 connections, README "Where the time goes")."""
    return counted_representations(model, shape, build, values)[1]


def counted_representations(model, shape, build, values, count=None):
    """(total, rows): the value the query `count()` makes (a COUNT, one row
    and column), or None without `count`, and the `representations` of the
    rows `build()` makes, both bound to `values`. On SQLite both come from
    one statement: each statement is a few more GIL hand-offs under load."""
    if not is_sqlite():
        found = None if count is None else run(("count", *shape), count, values).fetchone()
        total = found and found[0]   # no row: a nested list's missing instance
        readers = db.readers.get(model)
        if readers is None:
            readers = db.readers[model] = [(field.column_name, wire_reader(field))
                                           for field in model._meta.sorted_fields]
        return total, [{name: value if read is None or value is None else read(value)
                        for (name, read), value in zip(readers, row)}
                       for row in run(shape, build, values)]
    sql, params = compiled(("json rows", count is None, *shape), lambda: json_rows(
        model, build().sql(), None if count is None else count().sql()))
    total, text = db.execute_sql(sql, bind(params, values)).fetchone()
    names, objects = columns(model)
    rows = [dict(zip(names, row)) for row in orjson.loads(text)]
    for name in objects:
        for row in rows:
            if row[name] is not None:
                row[name] = orjson.Fragment(row[name])
    return total, rows


def json_rows(model, select, count=None):
    """SQLite: one statement for the compiled `select` (a model.select()):
    the compiled `count` query's value (or NULL), and a JSON array of the
    select's rows, each an array of its columns' JSON values. The aggregate
    reads the rows in the order the ordered, limited subquery yields them
    (SQLite 3.44 would take the ORDER BY inside the aggregate; 3.40 is
    common)."""
    (sql, params), (count_sql, count_params) = select, count or ("NULL", [])
    values = ", ".join(_sqlite_json_value(field, f'"row"."{field.column_name}"')
                       for field in model._meta.sorted_fields)
    return (f'SELECT ({count_sql}), json_group_array(json_array({values})) '
            f'FROM ({sql}) AS "row"', [*count_params, *params])


def _sqlite_json_value(field, column):
    field = getattr(field, "rel_field", field)
    if isinstance(field, UTCDateTimeField):
        # The stored "YYYY-MM-DD HH:MM:SS.ffffff" (UTCDateTimeField) as RFC 3339.
        return f"replace({column}, ' ', 'T') || '+00:00'"
    # UUIDs are stored as written (CanonicalUUIDField); JSON objects come as
    # the stored text, a JSON string here.
    return column


@cache
def columns(model):
    """`model`'s column names in select order, and those of its JSON objects."""
    fields = model._meta.sorted_fields
    return ([field.column_name for field in fields],
            [field.column_name for field in fields if isinstance(field, ObjectField)])


def wire_reader(field):
    """PostgreSQL: how a raw value of `field` becomes its JSON value."""
    field = getattr(field, "rel_field", field)
    if isinstance(field, UUIDField):
        return str
    if isinstance(field, UTCDateTimeField):
        return rfc3339
    return None   # the driver gives JSON objects parsed, numbers and text as they are


def rfc3339(moment):
    """An aware datetime as the API writes it: UTC, microseconds, +00:00."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class BaseModel(Model):
    id = CanonicalUUIDField(primary_key=True, default=new_id)
    created_at = UTCDateTimeField(default=utcnow)

    # Closed-set columns that sort in the order of their set (severity,
    # lifecycle) rather than alphabetically.
    RANKED = {}
    # The index that serves sorting the whole table by a column (see
    # read_in_order_of).
    SORT_INDEXES = {}

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
        """One multi-row INSERT, compiled once per row count (models.run).
        Row by row, SQLite gives up the GIL after every row, and the writer,
        holding the write lock, waits for it each time behind the threads
        that are parsing and serializing."""
        fields = cls._meta.sorted_fields
        sql, params = compiled(("insert", cls, len(rows)), lambda: cls.insert_many([
            {field: Slot((index, field.column_name), field.db_value) for field in fields}
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
                    "status": "instance_status_rank"}

    site_id = CanonicalUUIDField()
    user_id = CanonicalUUIDField()
    name = TextField()
    instance_type = TextField()
    status = TextField()
    agent_id = CanonicalUUIDField(null=True)
    configuration = ObjectField()
    environment_variables = ObjectField()
    # How many logs the instance has, kept in the transaction that adds them
    # (logs are never deleted alone), so an unfiltered log list's
    # X-Total-Count costs one row read instead of counting 100,000 index
    # entries. Not part of the API's representation.
    log_count = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])

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
        )


# In parentheses of its own: PostgreSQL takes an expression in an index only so.
Instance.add_index(Instance.index(EnclosedNodeList([Instance.sort_key("status")]),
                                  name="instance_status_rank"))


class InstanceLog(BaseModel):
    RANKED = {"level": LOG_LEVELS}

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

    @classmethod
    def append(cls, instance_id, entries):
        """Insert logs of one instance, all or none; None when there is no
        such instance (the foreign key refuses them). Their instance's
        log_count rises in the same statement (COUNT_LOGS)."""
        try:
            return cls.add(entries, instance_id=instance_id)
        except IntegrityError as exc:
            if "foreign key" in str(exc).lower():
                return None
            raise


# Instance.log_count follows the inserts into instance_log in the database
# itself, so every insert keeps it (the API, a bulk seed) and a single log is
# one statement. SQLite triggers run per row; PostgreSQL's runs once per
# statement over the inserted rows. Logs are deleted only with their instance.
COUNT_LOGS = {
    "sqlite": ["""
        CREATE TRIGGER IF NOT EXISTS instance_log_counted AFTER INSERT ON instance_log
        BEGIN
            UPDATE instance SET log_count = log_count + 1 WHERE id = NEW.instance_id;
        END"""],
    "postgresql": ["""
        CREATE OR REPLACE FUNCTION instance_log_counted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE instance SET log_count = log_count + added.n
            FROM (SELECT instance_id, count(*) AS n FROM new_logs GROUP BY instance_id) AS added
            WHERE instance.id = added.instance_id;
            RETURN NULL;
        END $$""", """
        CREATE OR REPLACE TRIGGER instance_log_counted AFTER INSERT ON instance_log
        REFERENCING NEW TABLE AS new_logs FOR EACH STATEMENT
        EXECUTE FUNCTION instance_log_counted()"""],
}


def create_triggers():
    for statement in COUNT_LOGS["sqlite" if is_sqlite() else "postgresql"]:
        db.execute_sql(statement)


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

    def ancestor_ids(self, limit=10_000):
        """Ids from this plan's parent up to its root."""
        ids, parent_id = [], self.parent_id
        while parent_id is not None and len(ids) < limit:
            ids.append(parent_id)
            parent_id = (InstancePlan.select(InstancePlan.parent)
                         .where(InstancePlan.id == parent_id).scalar())
        return ids


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

# Files written by the first release have the tables but no schema_version.
FIRST_VERSION = 1
SCHEMA_VERSION = 6


class SchemaTooNew(Exception):
    pass


def _add_plan_tree_and_times(migrator):
    migrate(
        migrator.add_column("instance_plan", "parent_id", InstancePlan.parent),
        migrator.add_column("instance_plan", "started_at", InstancePlan.started_at),
        migrator.add_column("instance_plan", "completed_at", InstancePlan.completed_at),
    )


def _count_logs_per_instance(migrator):
    # One ALTER TABLE ... NOT NULL DEFAULT 0. Without allow_not_null,
    # playhouse would rebuild the table to add NOT NULL afterwards, and
    # dropping the old `instance` table would cascade to every log and plan.
    migrate(migrator.add_column("instance", "log_count", Instance.log_count,
                                allow_not_null=True))
    recount_logs()


def recount_logs():
    """Set every instance's log_count from its rows (migration, bulk seed)."""
    counted = (InstanceLog.select(fn.COUNT(InstanceLog.id))
               .where(InstanceLog.instance == Instance.id))
    Instance.update(log_count=counted).execute()


def _canonical_json(migrator):
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


# MIGRATIONS[n] takes a database at version n - 1 to version n. New tables,
# indexes and triggers need no entry: create_tables adds whatever is missing
# (version 4's sort indexes, version 5's log counting trigger).
MIGRATIONS = {2: _add_plan_tree_and_times, 3: _count_logs_per_instance, 4: _canonical_json,
              6: _canonical_uuids}


def create_tables():
    """Bring the database file to SCHEMA_VERSION: create it when empty,
    migrate it when older, refuse it when a newer server wrote it. A file
    already at SCHEMA_VERSION is only read, so a read-only file can serve."""
    with db.connection_context():
        version = stored_version()
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version}, newer than this server's "
                f"{SCHEMA_VERSION}; run a newer instance-api or another file")
        with db.atomic():
            migrator = SchemaMigrator.from_database(db.obj)
            for step in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                if step in MIGRATIONS:
                    MIGRATIONS[step](migrator)
            db.create_tables(MODELS, safe=True)
            create_triggers()
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)


def verify_wal():
    """Refuse a database where WAL could not be enabled (a network file
    system, a read-only directory): readers would block the writer."""
    if not is_sqlite():
        return
    with db.connection_context():
        mode = db.execute_sql("PRAGMA journal_mode").fetchone()[0]
    if mode != "wal":
        raise DatabaseUnfit(f"the database runs in journal_mode={mode}, not wal; put it on a "
                            "local file system in a writable directory")


class DatabaseUnfit(Exception):
    pass


def stored_version():
    """The schema version of the open file; None for an empty file."""
    tables = set(db.get_tables())
    if Instance._meta.table_name not in tables:
        return None
    if SchemaVersion._meta.table_name not in tables:
        return FIRST_VERSION
    return SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()


class BackupFailed(Exception):
    pass


def backup(source, target, progress=None):
    """Copy the database at `source` into a new file `target` while servers
    keep writing to it, check the copy, and return its size in pages.

    VACUUM INTO reads one snapshot (in WAL mode writers go on meanwhile) and
    writes a compact copy; SQLite's page-by-page backup API would restart
    from the beginning after every write by another connection, and might
    never finish under steady writes. `progress(done, total)` is called as
    the copy grows (in pages), at most once per percent.
    """
    if os.path.exists(target):
        raise BackupFailed(f"{target} already exists; name a new file")
    if not os.path.isfile(source):
        raise BackupFailed(f"there is no database at {source}")
    conn = sqlite3.connect(source, timeout=30)
    try:
        page_size, pages, free = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                                  for name in ("page_size", "page_count", "freelist_count"))
        total, shown = max(pages - free, 1), [-1]

        def report():
            done = min(os.path.getsize(target) // page_size, total) if os.path.exists(target) else 0
            if done * 100 // total > shown[0]:
                shown[0] = done * 100 // total
                progress(done, total)
            return 0  # go on

        if progress:
            conn.set_progress_handler(report, 100_000)
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()
    copy = sqlite3.connect(target)
    try:
        checked = copy.execute("PRAGMA integrity_check").fetchall()
        copied = copy.execute("PRAGMA page_count").fetchone()[0]
    finally:
        copy.close()
    if checked != [("ok",)]:
        raise BackupFailed(f"the copy at {target} fails integrity_check: {checked[:5]}")
    if progress:
        progress(total, total)
    return copied
