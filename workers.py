"""Worker processes: how many by default, and the parent that forks them
on one listening socket, waits until each has reached the database, replaces
those that die and passes SIGTERM on.

Not here: what each worker serves (server.py builds it).
"""
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import threading
import time

from peewee import DatabaseError

import metrics
from migrations import SchemaTooNew, stored_version
from storage import db
from storage.engines import DatabaseUnfit

log = logging.getLogger("instance_api")


# What stops a server (or one of its workers) from starting, said in one
# "Cannot start" line rather than a traceback.
STARTUP_ERRORS = (ValueError, OSError, DatabaseError, SchemaTooNew, DatabaseUnfit)
# The most workers the default starts: past a few processes, SQLite's one
# write lock and the memory of each (bench/README.md) buy less than they cost.
MAX_AUTO_WORKERS = 8


def worker_count(setting):
    """`setting` (WORKERS), or for 0 one worker per CPU this process may
    use, at most MAX_AUTO_WORKERS."""
    return setting or min(MAX_AUTO_WORKERS, usable_cpus())


def usable_cpus():
    """The CPUs this process may run on (its affinity mask, which taskset
    and cpusets narrow), fewer under a cgroup CPU quota (a container
    limited to 2 CPUs on a 64-core host would otherwise start 8 workers
    on 2 CPUs' worth of time)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass   # no cgroup v2 quota
    return count


def bind(host, port):
    """A listening socket made before the workers fork, so they share it and
    the kernel spreads connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(1024)
    return listener


# The two kinds of worker: one that serves requests, and the one per server
# that runs the background jobs (server.py says why they are apart).
SERVE, JOBS = "serve", "jobs"
# The jobs worker's name in ps, top and /proc/PID/comm (Linux: 15 bytes at most).
JOBS_NAME = "instance-jobs"


def prefork(listener, workers, make_worker, ready):
    """Fork a process for each role in `workers` (SERVE or JOBS) and watch
    them.

    In each, `make_worker(role)` builds what it runs and returns the call
    that runs it until SIGTERM (its exit code); `ready(host, port)` is
    called once every worker is running.

    Each worker reports on a pipe once it has made its server and reached
    the database on a connection of its own, or why it could not: the
    start-up line waits for all of them, and if one cannot start the server
    says so ("Cannot start") and exits 2. Later, a worker that dies is
    replaced (one that then cannot start is tried again, less and less
    often); SIGTERM or SIGINT is passed on, and each worker finishes its
    requests in flight before the parent exits 0.

    Shutdown is shutdown, whoever gets the signal: a worker exits 0 only
    when told to stop, so a worker that exits 0 (or dies of SIGTERM or
    SIGINT) is never replaced; the parent takes it for a stop of the whole
    server (systemd's KillMode=control-group and `kill -TERM -- -PGID`
    signal the workers too, and a worker may exit before the parent has
    seen its own signal). Once stopping, the parent starts no worker."""
    # No connection may cross the fork: each worker opens its own.
    db.close_all()
    # What the parent built (the app, its schemas, the modules) is shared
    # with the workers until written to; the collector's own bookkeeping
    # would write to every object it visits, each write copying a page.
    gc.freeze()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.set())
    reports, reporter = os.pipe()
    os.set_blocking(reports, False)

    parent = os.getpid()

    def spawn(role):
        pid = os.fork()
        if pid == 0:  # the worker
            die_with(parent)
            if role == JOBS:
                name_process(JOBS_NAME)
            os.close(reports)
            # The handlers stay: a SIGTERM or SIGINT from now on sets this
            # process's copy of `stopping`, which its serving loop watches
            # (one that comes while it starts ends it once it is ready).
            code = 1
            try:
                try:
                    serve_here = make_worker(role)
                    check_database()
                except STARTUP_ERRORS as exc:
                    tell(reporter, f"failed {exc}")
                    code = 2
                else:
                    tell(reporter, "ready")
                    code = serve_here(stopping)
            finally:
                logging.shutdown()   # its last lines: os._exit skips this
                os._exit(code)
        return pid

    watch = Workers(reports)
    for role in workers:
        watch.started(spawn(role), role)
    failure = watch.wait_until_ready(stopping, deadline=time.monotonic() + STARTUP_TIMEOUT)
    if failure is not None:
        log.error("Cannot start: %s", failure)
        listener.close()
        watch.stop_all()
        return 2
    if not stopping.is_set():
        ready(*listener.getsockname()[:2])
    while not stopping.is_set():
        replace = watch.poll(timeout=0.2)
        if watch.stopped is not None:
            log.info("Worker %d was told to stop; stopping the server", watch.stopped)
            break
        for role in replace:
            if stopping.is_set():   # a signal that came during poll
                break
            watch.started(spawn(role), role)
    # The socket closes when its last holder closes it: the parent's copy
    # first, so that once each worker has closed its own (drain) new
    # connections are refused, not queued where nobody will accept them.
    listener.close()
    watch.stop_all()
    log.info("Stopped")
    return 0


# How a worker that was told to stop exits: 0 from its serving loop, or the
# signal itself if it came before the worker could handle it.
STOPPED = (0, -signal.SIGTERM, -signal.SIGINT)
# How long a worker may take to stop (server.DRAIN_TIMEOUT, and a little
# more) before it is killed.
STOP_TIMEOUT = 10
# How long the workers may take to report at start (a PostgreSQL server
# that does not answer is given up on by the driver well before).
STARTUP_TIMEOUT = 60
# A replacement worker that cannot start is tried again after this many
# seconds, doubled after each failure up to RETRY_MAX.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


def die_with(parent):
    """Linux: this worker is killed when the parent dies, as one server
    process would be (kill -9, the OOM killer): workers left behind would
    go on serving the port and writing the database unwatched."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return   # not Linux
    if os.getppid() != parent:   # it died before prctl
        os._exit(1)


def name_process(name):
    """Linux: this process's name, as ps and /proc/PID/comm show it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass   # not Linux


PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def tell(pipe, message):
    """One line to the parent: "PID ready" or "PID failed REASON". A write
    of less than PIPE_BUF bytes is never interleaved with another's."""
    line = f"{os.getpid()} {' '.join(message.split())}"[:1000] + "\n"
    os.write(pipe, line.encode("utf-8", "replace"))


def check_database():
    """A worker's first round trip to the database, on a connection of its
    own, so that a worker that cannot reach it says so at start rather than
    in answer to its first requests."""
    with db.connection_context():
        stored_version()


class Workers:
    """The parent's view of its workers: which are running, which have
    reported ready, and when to try again a replacement that could not
    start."""

    def __init__(self, reports):
        self.reports, self.buffered = reports, b""
        self.running, self.ready, self.failed = set(), set(), {}
        self.roles = {}   # pid: SERVE or JOBS
        # A worker that exited as a stopped one does (STOPPED), if any.
        self.stopped = None
        self.retry, self.delay = [], RETRY_FIRST

    def started(self, pid, role):
        self.running.add(pid)
        self.roles[pid] = role

    def read_reports(self, timeout):
        """Take the lines the workers wrote, waiting up to `timeout` for one."""
        readable, _, _ = select.select([self.reports], [], [], timeout)
        if not readable:
            return
        try:
            self.buffered += os.read(self.reports, 65536)
        except BlockingIOError:
            return
        *lines, self.buffered = self.buffered.split(b"\n")
        for line in lines:
            pid, _, message = line.decode("utf-8", "replace").partition(" ")
            if message == "ready":
                self.ready.add(int(pid))
                self.delay = RETRY_FIRST
            else:
                self.failed[int(pid)] = message.removeprefix("failed ")

    def reap(self):
        """The workers that have exited, with their exit codes."""
        exited = {}
        while self.running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            if pid in self.running:
                self.running.discard(pid)
                metrics.process_ended(pid)
                exited[pid] = os.waitstatus_to_exitcode(status)
        return exited

    def wait_until_ready(self, stopping, deadline):
        """None once every worker has reported ready (or SIGTERM came),
        else why one could not start."""
        while not stopping.is_set() and not self.running <= self.ready:
            self.read_reports(timeout=0.1)
            if self.failed:
                return "a worker process could not start: " + next(iter(self.failed.values()))
            exited = self.reap()
            if exited:
                self.read_reports(timeout=0)
                pid, code = next(iter(exited.items()))
                why = self.failed.get(pid, f"it exited with status {code}")
                return f"a worker process could not start: {why}"
            if time.monotonic() > deadline:
                return (f"{len(self.running - self.ready)} worker processes did not start "
                        f"within {STARTUP_TIMEOUT} s")
        return None

    def poll(self, timeout):
        """Wait up to `timeout` for reports; the roles of the workers to
        start now in place of those that exited (a worker that had started,
        at once; one that could not start, after a growing delay)."""
        self.read_reports(timeout)
        now, replace = time.monotonic(), []
        for pid, code in self.reap().items():
            role = self.roles.pop(pid)
            if pid in self.ready and code in STOPPED:
                self.ready.discard(pid)
                self.stopped = pid
            elif pid in self.ready:
                self.ready.discard(pid)
                log.warning("%s %d exited (status %d); starting another",
                            "Worker" if role == SERVE else "Jobs worker", pid, code)
                replace.append(role)
            else:
                self.read_reports(timeout=0)
                why = self.failed.pop(pid, f"it exited with status {code}")
                log.warning("Worker %d could not start (%s); trying again in %g s",
                            pid, why, self.delay)
                self.retry.append((now + self.delay, role))
                self.delay = min(self.delay * 2, RETRY_MAX)
        due = [role for at, role in self.retry if at <= now]
        self.retry = [(at, role) for at, role in self.retry if at > now]
        return replace + due

    def stop_all(self):
        """SIGTERM to every worker; those still running after STOP_TIMEOUT
        are killed."""
        for pid in self.running:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.running:
            os.kill(pid, signal.SIGKILL)
        self.reap()
