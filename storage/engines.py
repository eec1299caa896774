"""Opening a database, and every difference between the two engines.

SQLite (one file, the default) and PostgreSQL (several server processes and
hosts): the pragmas, the connection per thread or the pool, what an error
that means "not now" looks like, row and key locks, and case-insensitive
search. The rest of the code asks the small functions here rather than
looking at the engine itself. Not here: the column types (fields), the
write path (writes) and the read path (reads).
"""
import select
import threading
import time
from contextlib import contextmanager
from functools import partial
from urllib.parse import parse_qs, urlsplit

import cysqlite
import orjson
from peewee import SQL, Cast, DatabaseError, Node, NodeList, SqliteDatabase, Value, fn
from playhouse.cysqlite_ext import CySqliteDatabase
from playhouse.pool import PooledPostgresqlDatabase

from storage import current, db
from storage.shapes import Shapes
from storage.tail import Listening, Polling, Tail
from storage.writes import Writer, WriterBusy

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
    17% more requests (bench/README.md "Where the time goes"). cysqlite's wheels
    also bring their own SQLite, whatever the system has.

    `release` ends a request; `close_all` stops the log watcher
    (storage.tail) and closes every thread's connection (at shutdown, before
    a fork, between tests)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._opened, self._opened_lock = set(), threading.Lock()

    def _connect(self):
        conn = super()._connect()
        # The query planner's stability guarantee: a plan made without
        # looking at the values bound to it. Otherwise SQLite marks a
        # statement whose plan could depend on a bound value (a WHERE value
        # beside ORDER BY ... LIMIT, as every list page has) and prepares it
        # again each time a value is bound: a sixth of a list's instructions
        # (bench/README.md). The plans are the ones tests/test_query_plans.py
        # checks, the same for every value.
        conn.db_config(cysqlite.SQLITE_DBCONFIG_ENABLE_QPSG, 1)
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
        self.tail.stop()
        with self._opened_lock:
            opened, self._opened = self._opened, set()
        for conn in opened:
            conn.close()
        # Each thread's state forgets its connection, closed above.
        self._state = type(self._state)()


class PooledPostgres(PooledPostgresqlDatabase):
    """PostgreSQL connections are shared out by a pool: a server has fewer
    sessions to give than a few processes of threads would keep."""

    def _is_closed(self, conn):
        # peewee asks the server (SELECT 1) on every check-out of an idle
        # connection: a round trip per request, half of a GET by id's
        # (bench/roundtrips.py). A session the server ended (a restart,
        # pg_terminate_backend, idle_session_timeout) has said so on the
        # socket, which a poll finds without asking; only then is the
        # server asked. A peer that vanished without a word fails the ping
        # and the request alike, after the same TCP timeout.
        adapter = self._adapter
        if (not conn.closed and adapter.txn_status(conn) == adapter.txn_idle
                and not _readable(conn.pgconn.socket)):
            return False
        return super()._is_closed(conn)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits, self._limits_lock = {}, threading.Lock()

    def release(self):
        """Give the connection back to the pool (rolled back if need be)."""
        if not self.is_closed():
            self.close()

    def close_all(self):
        self.tail.stop()
        for limited in list(self.limits.values()):
            limited.close_all()
        super().close_all()

    def limited(self, milliseconds):
        """This database with statement_timeout `milliseconds` (read_limit):
        a pool of its own, whose sessions are opened with the setting.
        Setting it on a shared session and resetting it after were two round
        trips of a list's four (bench/roundtrips.py). A list request reads
        from this pool alone, so a thread holds one session at a time; the
        idle sessions kept are at most a thread's worth per pool."""
        found = self.limits.get(milliseconds)
        if found is None:
            with self._limits_lock:
                found = self.limits.get(milliseconds)
                if found is None:
                    found = self.limits[milliseconds] = LimitedPostgres(self, milliseconds)
        return found

    def unpooled_connection(self):
        """A psycopg connection of its own, in autocommit: the log watcher's,
        which LISTENs as long as the process serves (storage.tail)."""
        import psycopg

        return psycopg.connect(conninfo=self.database, autocommit=True, **self.connect_params)


class LimitedPostgres(PooledPostgres):
    """The sessions of `parent`'s limited reads (PooledPostgres.limited):
    the same server, settings and shared state, statement_timeout added."""

    def __init__(self, parent, milliseconds):
        params = dict(parent.connect_params)
        params["options"] = f"{params.get('options', '')} -c statement_timeout={milliseconds}"
        super().__init__(parent.database, prefer_psycopg3=True, max_connections=None,
                         stale_timeout=parent._stale_timeout, field_types=parent._field_types,
                         **params)
        # What the code reading through `db` finds on the database it is.
        for name in ("writer", "tail", "shapes", "text_timestamps"):
            setattr(self, name, getattr(parent, name))

    def limited(self, milliseconds):
        raise TypeError("a limited read inside another")

    def close_all(self):
        super(PooledPostgres, self).close_all()


def _readable(fd):
    """Whether the socket `fd` has something to read now (or was closed)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# The oldest SQLite the statements run on: concat() came in 3.44, deleting
# from a contentless full-text table (the name search) in 3.43.
SQLITE_MINIMUM = (3, 44, 0)


def check_sqlite(path):
    """Refuse, before opening anything, what this service cannot run on:
    a SQLite library older than SQLITE_MINIMUM (the one cysqlite links,
    which is not necessarily the system's), or an in-memory database, which
    SQLite gives each connection (one per thread here) of its own: every
    request thread would see another, empty database."""
    version = cysqlite.sqlite_version_info
    if tuple(version[:3]) < SQLITE_MINIMUM:
        raise DatabaseUnfit(
            f"the SQLite library is {cysqlite.sqlite_version}; this service needs "
            f"{'.'.join(map(str, SQLITE_MINIMUM[:2]))} or later (upgrade cysqlite, whose "
            "wheels bring their own SQLite)")
    if path in ("", ":memory:") or (path.startswith("file:") and "mode=memory" in path):
        raise DatabaseUnfit(
            f"an in-memory SQLite database ({path or 'empty name'}) would be a different, "
            "empty database in each thread; use a file (a temporary one for tests)")


def open_sqlite(path, busy_timeout=5.0, synchronous="NORMAL"):
    """A SQLite database, a connection per thread (ThreadSqliteDatabase),
    once check_sqlite has found nothing to refuse.

    Every transaction begins IMMEDIATE, taking the write lock up front: the
    writes that read first (If-Match, idempotency keys, parent checks) then
    cannot interleave, and no transaction has to upgrade a read lock, which
    in WAL mode fails at once instead of waiting for the busy timeout.
    """
    check_sqlite(path)
    database = ThreadSqliteDatabase(
        path, pragmas=sqlite_pragmas(synchronous, busy_timeout), lock_type="IMMEDIATE",
        rank_functions=False,   # full-text ranking; nothing here searches that way
    )
    database.writer = Writer(busy_timeout)
    database.tail = Tail()
    database.shapes = Shapes()
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
    database.tail = Tail()
    database.shapes = Shapes()
    database.text_timestamps = False
    # jsonb keeps numbers as NUMERIC and writes 1e20 back as 100000000000000000000;
    # psycopg's default loader (json) would make that an int wider than 64
    # bits, which orjson cannot write. orjson reads it as the float it was.
    from psycopg.types.json import set_json_loads
    set_json_loads(orjson.loads)
    return database


def is_sqlite():
    return isinstance(db.obj, SqliteDatabase)


class ReadTimeout(Exception):
    """A read stopped by the read time limit (read_limit)."""

    def __init__(self, seconds):
        super().__init__(f"a read took longer than {seconds:g} s")
        self.seconds = seconds


# SQLite calls a limited read's progress handler every this many virtual
# machine instructions: about every 1 to 2 ms (50 to 100 million a second
# here), often enough for a limit of seconds, and rare enough that a list
# page (tens of thousands) seldom calls it at all.
PROGRESS_STEPS = 100_000
# What the engines say when they stop a statement for the limit.
STOPPED = ("interrupted", "statement timeout")


@contextmanager
def read_limit(seconds):
    """Stop the statements run inside after `seconds` in all (0: no limit),
    raising ReadTimeout; for reads only, so that no write is ever cut.

    SQLite: the connection's progress handler, set for the duration and
    taken off after, compares the clock to the deadline; SQLite stops the
    statement when it says so. PostgreSQL: the statements run on a session
    opened with statement_timeout (each statement has the whole limit),
    from a pool of its own (PooledPostgres.limited), so that no session
    serving writes is ever limited and none is set and reset per read."""
    if not seconds:
        yield
        return
    database = db.obj
    sqlite = is_sqlite()
    try:
        if sqlite:
            conn = database.connection()
            deadline = time.monotonic() + seconds
            conn.progress(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
        else:
            token = current.set(database.limited(max(1, round(seconds * 1000))))
        try:
            yield
        finally:
            if sqlite:
                conn.progress(None)
            else:
                db.release()
                current.reset(token)
    except DatabaseError as exc:
        if any(word in str(exc) for word in STOPPED):
            raise ReadTimeout(seconds) from exc
        raise


def log_watcher(versions, channel):
    """How a process learns of the logs other processes commit, for
    storage.tail: SQLite polls, reading `versions(instance_ids)` when the
    file has changed; PostgreSQL LISTENs on `channel` (an SQL expression of
    its name), which the log-count trigger notifies."""
    database = db.obj
    if is_sqlite():
        return partial(Polling, database=database, versions=versions)
    return partial(Listening, connect=database.unpooled_connection, channel=channel)


def for_write(query):
    """`query` locking its rows until the write transaction ends, where the
    engine has row locks (PostgreSQL). SQLite's IMMEDIATE transaction already
    holds the whole file."""
    return query.for_update() if db.for_update else query


# SQLite: a stored timestamp (fixed-width text, storage.fields) plus whole
# seconds, as the same text. strftime keeps milliseconds; the zeros restore
# the width, so text order is still time order.
SQLITE_PLUS_SECONDS = ("(strftime('%Y-%m-%d %H:%M:%f', {moment}, '+' || {seconds} || ' seconds')"
                       " || '000')")


def plus_seconds(moment, seconds):
    """SQL: the timestamp `moment` (a column, or a value as its column binds
    it) plus `seconds` (an integer column)."""
    if is_sqlite():
        return NodeList((SQL("(strftime('%Y-%m-%d %H:%M:%f', "), moment,
                         SQL(", '+' || "), seconds, SQL(" || ' seconds') || '000')")), glue="")
    if not isinstance(moment, Node):
        moment = Cast(Value(moment, converter=False), "timestamptz")
    return NodeList((moment, SQL("+"), seconds, SQL("* interval '1 second'")))


# How long a server starting beside another waits for it to create or
# migrate the tables (a migration of a large file takes minutes).
SCHEMA_WAIT = 600.0


@contextmanager
def schema_lock():
    """The transaction that creates or migrates the tables, one server at a
    time, across processes and hosts. SQLite: BEGIN IMMEDIATE (every
    transaction here begins so), waiting up to SCHEMA_WAIT for the write
    lock. PostgreSQL: an advisory lock held until the transaction ends
    (commit, rollback or a lost connection); without it, two servers
    starting together on a new database both create the tables, and one
    fails on pg_type's unique index."""
    if is_sqlite():
        waited = db.execute_sql("PRAGMA busy_timeout").fetchone()[0]
        db.execute_sql(f"PRAGMA busy_timeout = {int(SCHEMA_WAIT * 1000)}")
        try:
            with db.atomic():
                yield
        finally:
            db.execute_sql(f"PRAGMA busy_timeout = {waited}")
        return
    with db.atomic():
        db.execute_sql(f"SET LOCAL lock_timeout = {int(SCHEMA_WAIT * 1000)}")
        # The two-key form: a lock space of its own, apart from lock_key's.
        db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
        yield


SCHEMA_LOCK = (0x1157A, 0x5C4E)   # "instance api", "schema"


def lock_key(text):
    """Serialize the transactions that use one key (an Idempotency-Key), across
    processes: a PostgreSQL advisory lock until the transaction ends. On
    SQLite the IMMEDIATE write lock already does it."""
    if not is_sqlite():
        db.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (text,))


def _casefold(text):
    return None if text is None else text.casefold()


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
