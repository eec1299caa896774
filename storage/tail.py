"""Waiting for an instance's next log (CONTRACT 3.3): who waits on which
instance in this process, and what wakes them.

A request that waits (routes/logs.py) registers the instance it follows,
reads its page, and if the page is empty sleeps on that instance's
condition, holding no database connection. Three things wake it:

- this process committing a log of the instance, or deleting it: the write
  path calls `touched` once its transaction has committed (models.py), so
  the wake is immediate;
- another process committing one, as this engine's watcher (one thread per
  process, started by the first wait) learns of it:
  SQLite (`Polling`): every POLL_INTERVAL it reads `PRAGMA data_version`,
  which moves whenever another connection, in any process, commits; when it
  has moved, ONE query reads the version (log count) of every instance
  waited on, and the instances whose version moved, or which are gone, are
  touched;
  PostgreSQL (`Listening`): it LISTENs on a connection of its own to the
  channel that the log-count trigger NOTIFYs at commit, the payload being
  the instance's id;
- the deadline, or the server stopping (`shutdown`).

The fleet's feeds (routes/feeds.py) wait the same way under keys of their
own: FLEET_LOGS, touched by every instance's touch, and the event feed's,
touched by the watcher (a NOTIFY of that key; on SQLite, the feeds' last
numbers read as their versions, feeds.versions).

A wake only means "read again": the waiter reads its page again (a log that
does not match its filters leaves it empty) and sleeps on if it is. So
waiting costs no query per waiter while nothing happens, and one per waiter
when its instance changes. At most `max_waits` requests wait at once; the
next is told to answer at once (`waiting` gives None).

Not here: the request (routes/logs.py), the triggers and the version query
(models.py), opening the engines (engines).
"""
import logging
import threading
import time
from contextlib import contextmanager

from storage import current

log = logging.getLogger("instance_api")

# How often the SQLite watcher looks at data_version: a commit in another
# process wakes its waiters in at most this long, plus one query.
POLL_INTERVAL = 0.05
# How long the first wait of a process may take to get the watcher
# listening before it answers at once instead (PostgreSQL connects).
READY_TIMEOUT = 5.0
# How often a watcher that lost its database tries again.
RETRY_INTERVAL = 1.0
UNKNOWN = object()
# The key that the fleet's log waits on (feeds.py, routes/feeds.py): every
# instance's new log touches it too. Keys of the fleet's feeds start with "*".
FLEET_LOGS = "*logs"


class Followed:
    """The waiters of one instance: how many, the condition they sleep on,
    how many times the instance was touched since the first of them came
    (`version`), and the instance's version as the watcher last read it
    (`known`: UNKNOWN until it has)."""
    __slots__ = ("waiters", "changed", "version", "known")

    def __init__(self, lock):
        self.waiters, self.version, self.known = 0, 0, UNKNOWN
        self.changed = threading.Condition(lock)


class Tail:
    """The waits of one process. `configure` gives the bound and the watcher
    (a callable making a Watcher for this tail); until then nobody waits."""

    def __init__(self):
        # One lock for the registry and every instance's condition: a touch
        # is a dictionary lookup under it.
        self.lock = threading.Lock()
        self.followed = {}          # instance id (canonical text): Followed
        self.waits = 0
        self.max_waits = 0
        self.stopping = False
        # Notified when a first waiter comes: the SQLite watcher sleeps
        # while nobody waits.
        self.arrived = threading.Condition(self.lock)
        self.make_watcher, self.watcher = None, None
        self.starting = threading.Lock()

    def configure(self, max_waits, make_watcher):
        self.max_waits, self.make_watcher = max_waits, make_watcher

    @contextmanager
    def waiting(self, key, seconds):
        """A Wait on instance `key` for up to `seconds`, or None when this
        request must answer at once: the bound is reached, the server is
        stopping, or the watcher could not start."""
        with self.lock:
            admitted = (self.make_watcher is not None and not self.stopping
                        and self.waits < self.max_waits)
            if admitted:
                self.waits += 1
                followed = self.followed.get(key)
                if followed is None:
                    followed = self.followed[key] = Followed(self.lock)
                    self.arrived.notify()
                followed.waiters += 1
        if not admitted:
            yield None
            return
        try:
            # Listening must have begun before the waiter first reads its
            # page: a log committed in between would wake nobody.
            ready = self.start_watcher()
            yield Wait(self, followed, time.monotonic() + seconds) if ready else None
        finally:
            with self.lock:
                self.waits -= 1
                followed.waiters -= 1
                if not followed.waiters:
                    del self.followed[key]

    def start_watcher(self):
        with self.starting:
            if self.watcher is None or not self.watcher.is_alive():
                self.watcher = self.make_watcher(self)
                self.watcher.start()
            watcher = self.watcher
        if watcher.ready.wait(READY_TIMEOUT):
            return True
        log.warning("Answering a wait at once: the log watcher is not ready")
        return False

    def keys(self):
        """The instances waited on now."""
        with self.lock:
            return list(self.followed)

    def touched(self, key):
        """Instance `key` has a new log, or is gone: its waiters read again,
        and so do the fleet log's (FLEET_LOGS). A key of the fleet's feeds
        (starting with "*") wakes its own waiters only."""
        with self.lock:
            for touched in (key,) if key.startswith("*") else (key, FLEET_LOGS):
                followed = self.followed.get(touched)
                if followed is not None:
                    followed.version += 1
                    followed.changed.notify_all()

    def touch_all(self):
        """Every waiter reads again (the watcher may have missed changes)."""
        with self.lock:
            self.touch_every()

    def touch_every(self):
        """touch_all, the lock held."""
        for followed in self.followed.values():
            followed.version += 1
            followed.changed.notify_all()

    def observed(self, versions, keys):
        """The watcher read `versions` (instance id: version, none for an
        instance that is gone) of the instances `keys`: touch those whose
        version is not the one it read before, or is gone. An instance it had
        not read before is touched too: the reading may already hold a log
        its waiter has not seen."""
        with self.lock:
            for key in keys:
                followed = self.followed.get(key)
                if followed is None:
                    continue
                version = versions.get(key)
                if version is None or version != followed.known:
                    followed.version += 1
                    followed.changed.notify_all()
                followed.known = version

    def shutdown(self):
        """The server is stopping: every waiter answers now with what it
        has, and no new wait begins. How many were waiting."""
        with self.lock:
            self.stopping = True
            self.touch_every()
            return self.waits

    def stop(self):
        """Stop the watcher (closing the database, or before a fork); the next
        wait starts another."""
        with self.starting:
            watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()


class Wait:
    """One request's wait on one instance, until `deadline` (monotonic)."""
    __slots__ = ("tail", "followed", "deadline")

    def __init__(self, tail, followed, deadline):
        self.tail, self.followed, self.deadline = tail, followed, deadline

    @property
    def version(self):
        """Take this before reading the page, and `sleep` on it after."""
        return self.followed.version

    def over(self):
        return self.tail.stopping or time.monotonic() >= self.deadline

    def sleep(self, seen, at_most=None):
        """Until the instance is touched after `seen`, the deadline, or
        shutdown; or `at_most` seconds (a reader that must look again soon)."""
        deadline = self.deadline if at_most is None else min(
            self.deadline, time.monotonic() + at_most)
        with self.tail.lock:
            while self.followed.version == seen and not self.tail.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.followed.changed.wait(remaining)


class Watcher(threading.Thread):
    """The thread of a process that learns of other processes' commits."""

    def __init__(self, tail):
        super().__init__(name="log-watcher", daemon=True)
        self.tail = tail
        self.ready = threading.Event()
        self.stopped = threading.Event()

    def stop(self):
        self.stopped.set()
        with self.tail.lock:    # a Polling watcher sleeps while nobody waits
            self.tail.arrived.notify_all()
        self.join(timeout=5)

    def run(self):
        while not self.stopped.is_set():
            try:
                self.watch()
            except Exception:
                # The thread must outlive a database restart: it logs, waits
                # and starts again, and every waiter reads once more then.
                log.exception("The log watcher failed; starting it again in %g s",
                              RETRY_INTERVAL)
                self.stopped.wait(RETRY_INTERVAL)
                self.tail.touch_all()


class Polling(Watcher):
    """SQLite: `PRAGMA data_version` polled; `versions(keys)` (one query)
    read when it moves. Runs on this thread's own connection of `database`,
    a statement at a time, so it never holds a read transaction open."""

    def __init__(self, tail, database, versions):
        super().__init__(tail)
        self.database, self.versions = database, versions

    def watch(self):
        # `versions` queries through storage.db: on this thread, that is
        # the database of the app this watcher serves, whichever app was
        # made last.
        current.set(self.database)
        self.ready.set()
        seen = None     # the first round reads every version
        try:
            while not self.stopped.is_set():
                if not self.wait_for_waiters():
                    seen = None
                    continue
                # data_version first, then which instances are waited on:
                # a log committed after a waiter read its page then moves
                # data_version after this read, and a later round reads it.
                version = self.database.execute_sql("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    keys = self.tail.keys()
                    self.tail.observed(self.versions(keys), keys)
                    seen = version
                self.stopped.wait(POLL_INTERVAL)
        finally:
            self.database.close()

    def wait_for_waiters(self):
        """True when someone waits; otherwise sleep until someone does, or
        the watcher stops, and give false: the caller then reads every
        version again, since it did not look meanwhile."""
        with self.tail.lock:
            if self.tail.followed:
                return True
            while not self.tail.followed and not self.stopped.is_set():
                self.tail.arrived.wait()
        return False


class Listening(Watcher):
    """PostgreSQL: LISTEN on `channel` (an SQL expression giving the
    channel's name) over a connection of its own, outside the pool; each
    notification's payload is an instance id to touch."""

    def __init__(self, tail, connect, channel):
        super().__init__(tail)
        self.connect, self.channel = connect, channel

    def watch(self):
        from psycopg import sql

        with self.connect() as conn:
            name = conn.execute(f"SELECT {self.channel}").fetchone()[0]
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            # Waiters that were sleeping before this connection listened
            # (after a failure) may have missed their notification.
            self.tail.touch_all()
            self.ready.set()
            while not self.stopped.is_set():
                # A short timeout, so that `stop` is seen soon.
                for notification in conn.notifies(timeout=0.1):
                    self.tail.touched(notification.payload)
