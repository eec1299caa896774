"""What /metrics exposes (CONTRACT 4.5): the metric objects, the calls that
record them, and the exposition summed over the server's processes.

prometheus_client is imported only by `setup`, never at import: it picks
how values are kept (in memory, or in per-process files that every worker
writes and any worker reads: multiprocess mode) when it is first imported,
from PROMETHEUS_MULTIPROC_DIR, which the server sets (`multiprocess_dir`)
only once it knows it will serve. An app embedded without that variable
serves its own process's values.

Recording is one histogram sample per request (two values written to the
process's memory-mapped file, no system call), made from one call in
app.Traced: 3% of a GET by id's instructions (docs/metrics.md). The
request and write counters are summed from the histograms at scrape time.
Instance counts and the database size are read at scrape time by a
collector, from the database, so they are not summed over workers.

Not here: the route (routes/metrics.py) or the server's processes
(server.py, workers.py).
"""
import os
import shutil
import tempfile
import threading
import time

PREFIX = "instance_api_"
MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"
DURATIONS = PREFIX + "request_duration_seconds"
WAITS = PREFIX + "wait_duration_seconds"
GROUPS = PREFIX + "write_group_size"
# The environ key a request that held a wait (routes/logs.py held) sets:
# it is timed in the waits histogram, not the request-duration one.
WAITED = "instance_api.waited"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The label values the background jobs may pass, each counter shown at 0
# from the start. Anything else is a programming error (an unbounded label
# set is how a metrics endpoint blows up Prometheus).
LIFECYCLE_REASONS = ("idle_timeout", "expired")
PURGED_KINDS = ("logs", "instances", "events", "idempotency_keys")
DELIVERY_OUTCOMES = ("delivered", "failed", "given_up")

# Seconds. Requests: a GET by id is ~0.2 ms in-process, a batch of 1,000
# logs ~50 ms; a busy write lock waits up to BUSY_TIMEOUT (5 s).
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
# Waits last up to the `wait` asked for (at most 60 s, CONTRACT 3.3).
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)
# Writes one commit stored together (storage.writes.Writer.combined).
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

_lock = threading.Lock()
_made = None   # the Metrics of this process, once setup has run


class Metrics:
    """The metric objects of this process, and the request histograms'
    children by (route, method, status, waited), so that a request costs a
    dict lookup rather than prometheus_client's labels() (a lock and label
    checks)."""

    def __init__(self):
        from prometheus_client import (
            CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values,
        )

        # As prometheus_client decided when it was first imported.
        self.multiprocess = getattr(values.ValueClass, "_multiprocess", False)
        if self.multiprocess:
            # Its values ask os.getpid() on every write, to notice a fork: a
            # system call, three per request. This process's id is known
            # (and follows forks) without one.
            values.ValueClass = values.MultiProcessValue(process_identifier=process_id)
        # No *_created series: multiprocess mode has none, and one process's
        # creation times say nothing about the server's.
        disable_created_metrics()
        # Our own registry: without the process and GC collectors of the
        # default one, which describe one process, not the server.
        self.registry = CollectorRegistry()
        kw = {"registry": self.registry}
        # One histogram sample per request (two values written); the
        # request counter is their _count, summed at scrape time (Requests).
        self.durations = Histogram(
            DURATIONS, "Time to the response's status and headers, by route template, "
            "method and status; requests that held a wait are in "
            "instance_api_wait_duration_seconds instead.", ["route", "method", "status"],
            buckets=REQUEST_BUCKETS, **kw)
        self.waits = Histogram(
            WAITS, "Time of the requests that held a wait for new rows (wait=...), by "
            "route template, method and status.", ["route", "method", "status"],
            buckets=WAIT_BUCKETS, **kw)
        self.waiters = Gauge(
            PREFIX + "waiters", "Requests holding a wait now, over every worker.",
            multiprocess_mode="livesum", **kw)
        # One sample per commit; the writes committed are its _sum,
        # shown as a counter of their own at scrape time (Derived).
        self.groups = Histogram(
            GROUPS, "Writes stored by one commit (group commit); _count is the commits.",
            buckets=GROUP_BUCKETS, **kw)
        self.lifecycle = Counter(
            PREFIX + "lifecycle_transitions_total", "Instances the service ended, by "
            "reason.", ["reason"], **kw)
        self.purged = Counter(
            PREFIX + "purged_rows_total", "Rows the retention purge deleted, by kind.",
            ["kind"], **kw)
        self.deliveries = Counter(
            PREFIX + "webhook_deliveries_total", "Webhook delivery attempts, by outcome.",
            ["outcome"], **kw)
        self.by_lifecycle = {reason: self.lifecycle.labels(reason) for reason in LIFECYCLE_REASONS}
        self.by_purge = {kind: self.purged.labels(kind) for kind in PURGED_KINDS}
        self.by_outcome = {outcome: self.deliveries.labels(outcome)
                           for outcome in DELIVERY_OUTCOMES}
        self.children = {}

    def child(self, key):
        """The `observe` of the histogram child for a request's `key`."""
        route, method, status, waited = key
        with _lock:
            made = self.children.get(key)
            if made is None:
                made = self.children[key] = (self.waits if waited else self.durations).labels(
                    route, method, status).observe
        return made

    def exposition(self):
        """The text format, summed over the server's processes in
        multiprocess mode (dead workers' counters included)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        registry.register(Derived(MultiProcessCollector(None) if self.multiprocess
                                  else self.registry))
        registry.register(DatabaseCollector())
        return generate_latest(registry)


class Derived:
    """The families of `source` (a collector), and two counters summed from
    histograms, so that the hot paths write one sample rather than two:
    instance_api_requests_total from the _count of the two request
    histograms (each request is in one of them), and
    instance_api_writes_committed_total from the group sizes' _sum."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        totals, writes = {}, 0.0
        for family in self.source.collect():
            if family.name in (DURATIONS, WAITS):
                for sample in family.samples:
                    if sample.name.endswith("_count"):
                        key = tuple(sample.labels[name] for name in ("route", "method", "status"))
                        totals[key] = totals.get(key, 0) + sample.value
            elif family.name == GROUPS:
                writes = sum(sample.value for sample in family.samples
                             if sample.name.endswith("_sum"))
            yield family
        requests = CounterMetricFamily(PREFIX + "requests", "Requests answered, by route "
                                       "template, method and status.",
                                       labels=["route", "method", "status"])
        for key, number in sorted(totals.items()):
            requests.add_metric(key, number)
        yield requests
        yield CounterMetricFamily(PREFIX + "writes_committed", "Writes committed: each "
                                  "group-committed insert and each transaction.", value=writes)


_pid = os.getpid()


def process_id():
    return _pid


def _forked():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def setup():
    """This process's Metrics, made on first use (create_app)."""
    global _made
    with _lock:
        if _made is None:
            _made = Metrics()
        return _made


def record(environ, status, started):
    """A request answered with `status` (the WSGI status line), begun at
    perf_counter() `started`: its count, and its time in the request or the
    waits histogram. The route is the template Flask matched (werkzeug
    leaves the request in the environ), `<unmatched>` for a 404 or 405."""
    elapsed = time.perf_counter() - started
    request = environ.get("werkzeug.request")
    rule = request.url_rule if request is not None else None
    method = environ["REQUEST_METHOD"]
    key = (rule.rule if rule is not None else UNMATCHED,
           method if method in METHODS else "other", status[:3], WAITED in environ)
    (_made.children.get(key) or _made.child(key))(elapsed)


def waiting(environ):
    """A request begins holding a wait: it counts among the waiters until
    `waited` and is timed as a wait."""
    if _made is not None:
        environ[WAITED] = True
        _made.waiters.inc()


def waited():
    if _made is not None:
        _made.waiters.dec()


def committed(writes):
    """One commit stored `writes` writes (storage.writes)."""
    if _made is not None and writes:
        _made.groups.observe(writes)


def lifecycle_ended(reason):
    """The lifecycle job ended an instance for `reason` (LIFECYCLE_REASONS)."""
    if _made is not None:
        _made.by_lifecycle[reason].inc()


def purged(kind, rows):
    """The purge deleted `rows` rows of `kind` (PURGED_KINDS)."""
    if _made is not None and rows:
        _made.by_purge[kind].inc(rows)


def delivered(outcome):
    """A webhook delivery attempt ended with `outcome` (DELIVERY_OUTCOMES)."""
    if _made is not None:
        _made.by_outcome[outcome].inc()


class DatabaseCollector:
    """Read at scrape time from the database, once for the whole server:
    instances by status and the database's size."""

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from storage import db

        counts = GaugeMetricFamily(PREFIX + "instances", "Instances by status, read from "
                                   "the database at scrape time.", labels=["status"])
        for status, number in db_status_counts():
            counts.add_metric([status], number)
        yield counts
        yield GaugeMetricFamily(PREFIX + "database_size_bytes", "Size of the database: "
                                "the SQLite file and its WAL, or on PostgreSQL the "
                                "schema's tables with their indexes and TOAST.",
                                value=database_size(db))


def db_status_counts():
    from models import INSTANCE_STATUSES
    from storage.counters import status_counts

    found = status_counts()
    return [(status, found.get(status, 0)) for status in INSTANCE_STATUSES]


def database_size(db):
    from storage.engines import is_sqlite

    if is_sqlite():
        path = next((file for _, name, file in db.execute_sql("PRAGMA database_list")
                     if name == "main"), "")
        return float(sum(os.path.getsize(name) for name in (path, path + "-wal")
                         if name and os.path.exists(name)))
    return float(db.execute_sql(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')").fetchone()[0])


def multiprocess_dir():
    """A fresh directory for the workers' metric files, made by the server
    before the app and its workers, named in PROMETHEUS_MULTIPROC_DIR for
    prometheus_client; `remove` it at exit."""
    path = tempfile.mkdtemp(prefix="instance-api-metrics-")
    os.environ[MULTIPROC] = path
    return path


def remove(path):
    shutil.rmtree(path, ignore_errors=True)


def process_ended(pid):
    """A worker exited: its live gauges (waiters) stop counting. Its counters
    and histograms stay, summed in with the others'."""
    if _made is not None and _made.multiprocess:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)
