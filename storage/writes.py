"""The write path: one writer at a time within a process, and the inserts
that threads queue meanwhile stored together (group commit).

Not here: what a row holds (models.py) or how the engine is opened
(engines).
"""
import threading
import time
from contextlib import contextmanager

from peewee import IntegrityError

import metrics
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
        # What to do once the outermost write of the lock's owner commits
        # (after_commit); only the owner touches it.
        self.on_commit = []

    @contextmanager
    def __call__(self, atomic=True):
        if not self.lock.acquire(timeout=self.timeout):
            raise WriterBusy(f"no write lock within {self.timeout:g} s")
        outer, self.owner = self.owner, threading.get_ident()
        committed = False
        try:
            if atomic:
                with db.atomic():
                    yield
            else:
                yield
            committed = outer is None
        finally:
            self.owner = outer
            callbacks = ()
            if outer is None:
                callbacks, self.on_commit = self.on_commit, []
            self.release()
        if committed:
            metrics.committed(1)
            for callback in callbacks:
                callback()

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

    def after_commit(self, callback):
        """Call `callback` once what this thread wrote is committed: at once
        outside a write (a single statement commits as it runs), else when
        the outermost write ends, and never if it fails."""
        if self.held():
            self.on_commit.append(callback)
        else:
            callback()

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
                insert_all(tickets)
            finally:
                self.release(stored=tickets)
            metrics.committed(sum(taken.error is None for taken in tickets))
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
    # In the order of what the rows share (a log's instance), arrival order
    # among equals: on PostgreSQL each log locks its instance's row until
    # the end of the transaction (log_triggers.py), and two processes
    # locking two instances in opposite orders would deadlock.
    for ticket in sorted(tickets, key=lambda ticket: sorted(ticket.shared.items())):
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
