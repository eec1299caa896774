"""The write path: one writer at a time within a process, and across the
processes writing one SQLite file; the inserts that threads queue meanwhile
stored together (group commit).

Not here: what a row holds (models.py) or how the engine is opened
(engines).
"""
import ctypes
import fcntl
import os
import threading
import time
from contextlib import contextmanager

from peewee import IntegrityError

from storage import db

# Rows per INSERT statement (BaseModel.add): 100 rows of the widest table
# bind about 1,200 values, far below either engine's limit.
ADD_CHUNK = 100


class WriterBusy(Exception):
    """The write lock could not be had within the busy timeout."""


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

    `across` (a FileLock, on SQLite) is taken inside the process's lock, by
    the outermost write only: the processes writing one file then write one
    at a time too, in the order they get it, and a write's timestamps
    (taken under both locks) follow the order of the commits whichever
    process makes them (see FileLock).
    """

    def __init__(self, timeout, across=None):
        self.timeout = timeout
        self.lock = threading.RLock()
        self.across = across or NO_LOCK
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
            if outer is None:
                self.across.acquire()
            try:
                if atomic:
                    with db.atomic():
                        yield
                else:
                    yield
            finally:
                if outer is None:
                    self.across.release()
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
        (bench/README.md "Where the time goes"). Had the others queued on the lock
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
                with self.across:
                    insert_all(tickets)
            finally:
                self.release(stored=tickets)
        if ticket.error is not None:
            raise ticket.error
        return ticket.rows


class FileLock:
    """A lock that the processes writing one SQLite file share: an flock(2)
    on a file beside it (`path`), opened by each process for itself (a
    lock belongs to an open file, and a file opened before a fork would be
    one lock for parent and child). The kernel drops it when its holder
    dies, and wakes a waiter as soon as it is let go.

    Why: a new row's created_at is taken before its INSERT. Within one
    process both happen under the writer lock, so rows are committed in the
    order of their timestamps; across worker processes, one process could
    stamp a log, and another stamp and commit a later one before the first
    was committed: a reader whose `after` cursor had moved past the second
    would never see the first (tests/test_engines.py). SQLite's own lock is
    taken only by the INSERT, after the stamp, and its busy handler polls
    (1, 2, 5 ms and growing) where this lock's waiter is woken at once.

    Free, it is taken and let go without giving up the GIL (flock through
    ctypes.PyDLL, a call of a microsecond or two): under load each hand-off
    of the GIL is a wait behind the other threads (bench/README.md). Only a
    waiter gives it up. A waiter waits for one holder's write, which its
    busy timeout bounds; there is no timeout of its own."""

    def __init__(self, path):
        self.path, self.fd = path, None
        os.register_at_fork(after_in_child=self.forget)

    def acquire(self):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if _flock(self.fd, LOCK_EX_NB) != 0:
            fcntl.flock(self.fd, fcntl.LOCK_EX)   # taken by another process: wait

    def release(self):
        _flock(self.fd, fcntl.LOCK_UN)

    def forget(self):
        """In a forked child: its parent's file is not this process's lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self):
        """Close this process's file (between tests, at shutdown)."""
        self.forget()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


class AdvisoryLock:
    """PostgreSQL: what FileLock is on SQLite, for every process and host
    writing one database: a session advisory lock, taken on the writing
    thread's connection and let go once the write is committed. Waiting
    for it counts towards lock_timeout (the busy timeout), so a writer
    waits no longer for it than for a row lock: then 503."""

    KEY = 0x696E7374616E6365   # "instance" in ASCII; any constant would do

    def acquire(self):
        db.execute_sql("SELECT pg_advisory_lock(%s)", (self.KEY,))

    def release(self):
        db.execute_sql("SELECT pg_advisory_unlock(%s)", (self.KEY,))

    def close(self):
        pass

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


class NoLock:
    """In place of a FileLock where no other process can write (an
    in-memory database)."""

    def acquire(self):
        pass

    def release(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


NO_LOCK = NoLock()
# flock(2) called holding the GIL (PyDLL): a free lock is a system call of a
# microsecond, not worth a hand-off of the GIL.
# (Without argtypes: ints go as C ints anyway, and converting through them
# costs a microsecond a call.)
_flock = ctypes.PyDLL(None).flock
LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB


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


def write(atomic=True):
    """The transaction every write runs in: the process's writer lock, then
    BEGIN IMMEDIATE (see Writer and open_sqlite); for a single statement,
    the lock alone."""
    return db.writer(atomic)
