"""Reading the fleet's feeds (feeds.py): a page of logs or events, newest
first with offsets, or in commit order after a position, with their count
(exact up to COUNT_LIMIT) and whether rows past the position are still held
back (PostgreSQL: written by a transaction older than one still open).

Not here: the routes (routes/feeds.py), the positions themselves (feeds.py),
the instance-scoped lists (routes/lists.py), whose filter machinery this
reuses.
"""
from functools import partial

import orjson
from peewee import JOIN, SQL, Cast, Column, Expression, NodeList, Tuple, fn

import search
from search import InstanceLabel
from feeds import Event, Position
from labels import DIFFERS, EQUALS, HAS, POSITIVE
from models import Instance, InstanceLog
from storage import db
from storage.engines import is_sqlite, plus_seconds
from storage.fields import ObjectField, UTCDateTimeField, rfc3339
from storage.reads import IndexedBy, Slot, bind, compiled, run

# X-Total-Count is exact up to this many rows, and left out beyond.
COUNT_LIMIT = 10_000
# A page of logs filtered by their instance alone that ends within
# MERGE_MOST logs is merged from the matching instances' own newest logs
# (Query.merged_page), reading up to MERGE_CANDIDATES of the instances.
MERGE_MOST, MERGE_CANDIDATES = 1_000, 4_096
# How many matching instances a count of logs by instance reads at most
# (Query.count_by_instances): enough for COUNT_LIMIT at ten logs each.
BY_INSTANCES = 1_001
FIRST_READ = 64


class Source:
    """A feed's table: its model, the columns of a row's position, and
    which of a list's arguments filter the row itself (the rest filter its
    instance, through `instance_filters`)."""

    def __init__(self, model, xid, seq, own):
        self.model, self.own = model, own
        self.xid, self.seq = Column(model, xid), Column(model, seq)

    def position_text(self):
        """SQL: a row's position as text, `<seq>` or `<xid>.<seq>`."""
        if is_sqlite():
            return Cast(self.seq, "TEXT")
        return fn.CONCAT(Cast(self.xid, "text"), SQL("'.'"), self.seq)

    def after(self):
        """Rows after the bound position, and on PostgreSQL written by a
        transaction older than every one still open (feeds.py)."""
        if is_sqlite():
            return [self.seq > Slot("seq")]
        return [Tuple(self.xid, self.seq) > Tuple(Cast(Slot("xid", str), "xid8"), Slot("seq")),
                self.xid < fn.pg_snapshot_xmin(fn.pg_current_snapshot())]

    def order(self):
        return [self.seq] if is_sqlite() else [self.xid, self.seq]


LOGS = Source(InstanceLog, "fleet_xid", "fleet_seq",
              own=("level", "min_level", "log_type", "since", "until", "instance_id"))
EVENTS = Source(Event, "xid", "position", own=("type", "instance_id", "site_id", "label"))


def position_of(source, row_id):
    """The Position of the row `row_id`, or None when there is none."""
    found = run(("position of", source.model), lambda: source.model.select(
        source.position_text()).where(source.model.id == Slot("id")), {"id": row_id}).fetchone()
    return None if found is None else parse_text(found[0])


def parse_text(text):
    xid, _, seq = text.rpartition(".")
    return Position(int(xid or 0), int(seq))


def event_label_condition(op, slots):
    """An event's labels (as the instance's were) hold one selector."""
    if is_sqlite():
        value = Expression(Event.labels, "->>", slots[0])
        if op == EQUALS:
            return value == slots[1]
        if op == DIFFERS:
            return Expression(value, "IS NOT", slots[1])
        return value.is_null(op != HAS)
    if op in (EQUALS, DIFFERS):
        holds = Expression(Event.labels, "@>", Cast(slots[-1], "jsonb"))
    else:
        holds = Expression(Event.labels, "?", slots[0])
    return holds if op in POSITIVE else ~holds


class Query:
    """One request's page of a feed: its filters bound, ready to read."""

    def __init__(self, source, args):
        # Imported here: the routes package imports this module (routes/feeds.py),
        # and a job importing this one first would otherwise go round in a circle.
        from routes.lists import Filtering

        self.source = source
        model = source.model
        own = {name: value for name, value in args.items() if name in source.own}
        labels = own.pop("label", None) if model is Event else None
        self.rows = Filtering(model, own)
        self.values = dict(self.rows.values)
        shape = [self.rows.shape]
        self.extra = []
        if labels:
            for index, selector in enumerate(labels):
                keys = [(index, position) for position in
                        range(len(search.selector_values(selector)))]
                self.values.update(zip(keys, search.selector_values(selector)))
                self.extra.append(event_label_condition(
                    selector.op, [Slot(key, lambda value: value) for key in keys]))
            shape.append(("event labels", tuple(s.op for s in labels)))
        others = {name: args[name] for name in ("site_id", "label")
                  if name in args and name not in source.own}
        self.instances = Filtering(Instance, others) if others else None
        self.narrowing = others
        if self.instances is not None:
            self.values.update(self.instances.values)
            shape.append(self.instances.shape)
        self.shape = tuple(shape)

    def conditions(self, in_order=False):
        found = self.rows.conditions() + self.extra
        if self.instances is not None and in_order:
            # Each row read tests its own instance (reads_in_order).
            found.append(fn.EXISTS(self.instances.where(
                Instance.select(SQL("1")), None).where(
                    Instance.id == self.source.model.instance)))
        elif self.instances is not None:
            found.append(self.source.model.instance.in_(
                self.matching_instances(Instance.select(Instance.id))))
        return found

    def matching_instances(self, query):
        """`query` (on Instance) narrowed to the instances the filters match:
        through the label index when a selector says what to have
        (search.selector_condition), the instance's filter indexes else."""
        return self.instances.where(query, self.drive())

    def label_forms(self):
        """The instances' label selectors, as (op, width) each."""
        return dict((name, form) for name, form, _ in self.instances.forms).get("label") or ()

    def drive(self):
        """The index of the first label selector that says what to have."""
        return next((index for index, (op, _) in enumerate(self.label_forms())
                     if op in POSITIVE), None)

    def select(self):
        model = self.source.model
        return model.select(*model._meta.sorted_fields, self.source.position_text())

    def count(self):
        """The number of matching rows, or None beyond COUNT_LIMIT."""
        if self.source is LOGS and self.instances is not None and not self.rows.forms:
            total = self.count_by_instances()
            if total is not False:
                return total

        def build():
            conditions = self.conditions()
            inner = self.source.model.select(SQL("1"))
            inner = (inner.where(*conditions) if conditions else inner).limit(COUNT_LIMIT + 1)
            sql, params = inner.sql()
            return f"SELECT count(*) FROM ({sql}) AS counted", params

        sql, params = compiled(("feed count", self.source.model, self.shape), build)
        total = db.execute_sql(sql, bind(params, self.values)).fetchone()[0]
        return None if total > COUNT_LIMIT else total

    def count_by_instances(self):
        """Logs filtered by their instance alone: the count from the
        instances' log_count (kept in the writes' transactions, so as exact
        as counting the logs), read for up to BY_INSTANCES of them. Counting
        the logs reads up to COUNT_LIMIT of them, each tested for its
        instance's labels: 16 ms at the large size for a page that takes
        1 ms. The instances are read FIRST_READ, then four times as many
        each time, up to BY_INSTANCES, until their logs are past the limit
        or there are no more: where instances have many logs, a few prove
        the count past it (1.3 ms for 1,001 instances at the large size).
        None when the count is past COUNT_LIMIT, False when these instances
        cannot tell (more of them, with few logs): count the logs."""
        def build():
            drive = self.drive() if is_sqlite() else None
            if drive is not None:
                # From the label index, each instance looked up in turn: as
                # `IN (...)`, SQLite lists every instance with the label
                # before the LIMIT can stop it (6.3 ms for env=prod at the
                # large size, against 1.9 ms). The conditions test the
                # selector again, a lookup by primary key. In the order of
                # the instances' creation, which is nearly that of their
                # rows in the file: in order of activity (the other label
                # index, LABEL_ACTIVITY) the lookups land all over it, and
                # 1,001 took 5.7 ms at the large size, against 1 ms.
                op, width = self.label_forms()[drive]
                query = InstanceLabel.select(Instance.log_count).from_(
                    IndexedBy(InstanceLabel, "instance_label_value")).join(
                    Instance, JOIN.CROSS).where(
                        InstanceLabel.instance_id == Instance.id,
                        *search.label_rows(op, self.instances.label_slots(drive)),
                        *self.instances.conditions())
            else:
                query = self.matching_instances(Instance.select(Instance.log_count))
            sql, params = query.limit(Slot("reads")).sql()
            return f"SELECT count(*), sum(log_count) FROM ({sql}) AS counted", params

        sql, params = compiled(("feed count by instances", self.shape), build)
        reads = min(FIRST_READ, BY_INSTANCES)
        while True:
            instances, total = db.execute_sql(
                sql, bind(params, {**self.values, "reads": reads})).fetchone()
            if (total or 0) > COUNT_LIMIT:
                return None
            if instances < reads:
                return int(total or 0)
            if reads == BY_INSTANCES:
                return False
            reads = min(reads * 4, BY_INSTANCES)

    def count_after(self, position, limit, held=False):
        """The number of matching rows after `position`, up to `limit`; with
        `held`, those still held back too (PostgreSQL)."""
        def build():
            after = self.source.after()[:1] if held else self.source.after()
            inner = self.source.model.select(SQL("1")).where(
                *after, *self.conditions()).limit(limit)
            sql, params = inner.sql()
            return f"SELECT count(*) FROM ({sql}) AS counted", params

        sql, params = compiled(
            ("feed count after", self.source.model, self.shape, limit, held), build)
        values = {**self.values, "xid": position.xid, "seq": position.seq}
        return db.execute_sql(sql, bind(params, values)).fetchone()[0]

    def page(self, limit, offset, sort=()):
        """Newest first (or by `sort`), from `offset`."""
        if not sort:
            rows = self.merged_page(limit, offset)
            if rows is not None:
                return rows

        def build():
            query = self.select()
            conditions = self.conditions(in_order)
            query = query.where(*conditions) if conditions else query
            from routes.lists import ordering
            order = (ordering(self.source.model, sort) if self.source is LOGS
                     else [self.source.seq.desc()])   # events: newest first by number
            if not conditions and self.source is LOGS:
                query = query.from_(InstanceLog.read_in_order_of(sort))
            elif in_order:
                query = query.from_(IndexedBy(InstanceLog, "instance_log_created"))
            return query.order_by(*order).limit(
                Slot("limit")).offset(Slot("offset"))

        in_order = not sort and self.reads_in_order(limit + offset)
        return self.read(("feed page", self.source.model, self.shape, tuple(sort), in_order),
                         build, limit=limit, offset=offset)

    def merges(self):
        """Whether a page may be merged from the matching instances' newest
        logs: logs filtered by their instance alone, by something that says
        how few (a site, a label to have)."""
        if self.source is not LOGS or not self.narrowing or self.rows.forms or self.extra:
            return False
        return "site_id" in self.narrowing or any(
            s.op in POSITIVE for s in self.narrowing.get("label", ()))

    def merged_page(self, limit, offset):
        """A page of logs filtered by their instance alone, newest first,
        merged from the newest logs of the matching instances with the
        latest activity; None when that cannot tell (read the logs then).

        Every log is less than a second older than its instance's
        last_activity_at, which never goes back (log_triggers.py; schema
        version 9 set it from the newest log). So with the matching instances in
        order of activity, no instance past the first `reads` has a log as
        new as the bound, the activity of the next one plus a second: the
        logs at or past the bound are all among the first ones' own newest
        `wanted`, and when there are `wanted` of them they are the page's.
        When not, four times as many instances are read, up to
        MERGE_CANDIDATES, or all there are. Either way a page costs about
        `wanted` instances and their newest logs, whatever the size of the
        fleet and however many logs another instance has appended since:
        read by time instead, a page of env=prod walked past each of the
        bench's 500,000 logs of one other instance (3 req/s, the large
        seed), and sorting every log of a fifth of 20,000 instances took
        0.7 s."""
        wanted = limit + offset
        if wanted > MERGE_MOST or not self.merges():
            return None
        reads = wanted
        while True:
            walk = self.walks(reads)
            rows = self.read(("feed merged", self.shape, walk), partial(self.merged, walk),
                             limit=limit, offset=offset, wanted=wanted, reads=reads,
                             candidates=reads + 1)
            if len(rows) == limit or self.candidates_read(walk, reads + 1) <= reads:
                return rows   # the page, or every matching instance's logs
            if reads >= MERGE_CANDIDATES:
                return None
            reads = min(reads * 4, MERGE_CANDIDATES)

    def candidates(self, walk):
        """The matching instances with logs, latest activity first, up to
        the `candidates` slot. SQLite: with a `key=value` selector, a range
        of the label rows in order of activity (search.LABEL_ACTIVITY), each
        instance tested for the rest; else by walking the instances'
        activity index and testing each (`walk`), or by listing the matching
        ones and sorting them (a small site, a rare label)."""
        conditions = self.instances.conditions()
        label = self.by_label_activity()
        if label is not None:
            slots = self.instances.label_slots(label)
            return InstanceLabel.select(
                InstanceLabel.instance_id.alias("id"),
                InstanceLabel.active_at.alias("last_activity_at")).from_(
                    IndexedBy(InstanceLabel, "instance_label_activity")).join(
                        Instance, JOIN.CROSS).where(
                            InstanceLabel.instance_id == Instance.id,
                            *search.label_rows(EQUALS, slots),
                            InstanceLabel.active_at > SQL("''"), Instance.log_count > 0,
                            *conditions).order_by(InstanceLabel.active_at.desc()).limit(
                                Slot("candidates"))
        newest, query = Instance.last_activity_at, Instance.select(
            Instance.id, Instance.last_activity_at)
        if is_sqlite() and walk:
            query = query.from_(IndexedBy(Instance, "instance_last_activity_at"))
        elif is_sqlite():
            newest = NodeList((SQL("+"), newest), glue="")   # +: not from its index
            conditions = self.instances.conditions(self.drive())
        return query.where(Instance.log_count > 0, *conditions).order_by(
            newest.desc()).limit(Slot("candidates"))

    def by_label_activity(self):
        """SQLite: the index of the first `key=value` selector, or None."""
        if not is_sqlite():
            return None
        return next((index for index, (op, _) in enumerate(self.label_forms())
                     if op == EQUALS), None)

    def candidates_read(self, walk, most):
        """How many instances candidates() gives, up to `most`."""
        def build():
            sql, params = self.candidates(walk).sql()
            return f"SELECT count(*) FROM ({sql}) AS counted", params

        sql, params = compiled(("feed merged candidates", self.shape, walk), build)
        values = {**self.values, "candidates": most}
        return db.execute_sql(sql, bind(params, values)).fetchone()[0]

    def merged(self, walk):
        """The query of merged_page: its candidates, the bound, and the
        newest logs of each candidate at or past the bound, `wanted` at most
        (SQLite: a correlated IN; PostgreSQL: a LATERAL join)."""
        found = self.candidates(walk).cte("candidates", materialized=True)
        activity = found.c.last_activity_at
        bound = fn.COALESCE(
            Instance.select(plus_seconds(activity, SQL("1.001"))).from_(found).order_by(
                activity.desc()).limit(1).offset(Slot("reads")),
            SQL("''") if is_sqlite() else SQL("'-infinity'::timestamptz"))
        if is_sqlite():
            own = InstanceLog.alias("own")
            newest = own.select(own.id).where(
                own.instance == found.c.id, own.created_at >= bound).order_by(
                    own.created_at.desc(), own.id.desc()).limit(Slot("wanted"))
            query = self.select().from_(found).join(InstanceLog, JOIN.CROSS).where(
                InstanceLog.id.in_(newest)).order_by(
                    InstanceLog.created_at.desc(), InstanceLog.id.desc())
        else:
            newest = self.select().where(
                InstanceLog.instance == found.c.id, InstanceLog.created_at >= bound).order_by(
                    InstanceLog.created_at.desc(), InstanceLog.id.desc()).limit(
                        Slot("wanted")).alias("newest")
            query = InstanceLog.select(SQL('"newest".*')).from_(found).join(
                newest, JOIN.LATERAL, on=SQL("true")).order_by(
                    SQL('"newest"."created_at" DESC'), SQL('"newest"."id" DESC'))
        return query.limit(Slot("limit")).offset(Slot("offset")).with_cte(found)

    def reads_in_order(self, wanted):
        """SQLite, a page of logs filtered by their instance alone (site_id,
        label) that merged_page could not read: whether to read the newest
        logs in order, testing each one's instance, or to read every log of
        the matching instances and sort them. SQLite's planner always does
        the latter, which for a label a fifth of the fleet has is every log
        of 20,000 instances sorted for a page of 50 (0.7 s at the large
        size). Reading in order costs about `wanted` logs per share of the
        instances that match; the other way, each log of theirs, several
        times over (DRIVE_COST, as for the instances' own lists:
        search.plan). Both take the matching logs to be spread over time."""
        if not is_sqlite() or not self.merges():
            return False
        table, logs, matched = self.shares()
        if not table or not matched:
            return False
        expected = wanted * table / matched
        return expected < search.DRIVE_COST * matched * logs / table

    def walks(self, reads):
        """SQLite: whether candidates() walks the activity index for
        `reads` instances (about reads per share of the fleet that matches)
        rather than list and sort the matching ones."""
        if not is_sqlite() or self.by_label_activity() is not None:
            return False
        table, _, matched = self.shares()
        return (reads + 1) * table <= matched * matched

    def shares(self):
        """SQLite: the rows in the instance and log tables (max(rowid): an
        estimate, enough here) and how many instances the narrowest
        filter matches: a label's from its counters, a site's counted up
        to search.NARROWED from its index. Read once per request."""
        if "shares_read" in self.__dict__:
            return self.shares_read
        parts, params = ["(SELECT max(rowid) FROM instance)",
                         "(SELECT max(rowid) FROM instance_log)"], []
        for selector in self.narrowing.get("label", ()):
            if selector.op in POSITIVE:
                part, values = search.matched_count(selector)
                parts.append(part)
                params += values
        if "site_id" in self.narrowing:
            parts.append("(SELECT count(*) FROM (SELECT 1 FROM instance WHERE site_id = ? "
                         "LIMIT ?))")
            params += [Instance.site_id.db_value(self.values["site_id"]), search.NARROWED]
        table, logs, *matched = db.execute_sql(f"SELECT {', '.join(parts)}", params).fetchone()
        self.shares_read = (table or 0, logs or 0, min(size or 0 for size in matched))
        return self.shares_read

    def after(self, position, limit):
        """The rows after `position`, in commit order."""
        def build():
            query = self.select().where(*self.source.after(), *self.conditions())
            return query.order_by(*self.source.order()).limit(Slot("limit"))

        return self.read(("feed after", self.source.model, self.shape), build, limit=limit,
                         xid=position.xid, seq=position.seq)

    def held_back(self, position):
        """PostgreSQL: whether a matching row past `position` is written by a
        transaction that is not yet below the hold-back line (it may have
        committed; the reader looks again soon). Never on SQLite."""
        if is_sqlite():
            return False
        source = self.source

        def build():
            after = Tuple(source.xid, source.seq) > Tuple(Cast(Slot("xid", str), "xid8"),
                                                          Slot("seq"))
            return source.model.select(SQL("1")).where(after, *self.conditions()).limit(1)

        values = {**self.values, "xid": position.xid, "seq": position.seq}
        return run(("feed held", source.model, self.shape), build, values).fetchone() is not None

    def one(self, row_id):
        """The row with id `row_id`, in a list (empty when there is none)."""
        model = self.source.model
        return self.read(("feed one", model), lambda: self.select().where(
            model.id == Slot("id")), id=row_id)

    def read(self, shape, build, **values):
        cursor = run(shape, build, {**self.values, **values})
        return [converted(self.source.model, row) for row in cursor.fetchall()]


def converted(model, row):
    """A row (the model's columns, then its position text) as the dict of
    JSON values the output schemas write, its position under `position`."""
    out = {}
    for field, value in zip(model._meta.sorted_fields, row):
        name = field.column_name
        if value is not None:
            kind = getattr(field, "rel_field", field)
            if isinstance(kind, UTCDateTimeField):
                value = (value.replace(" ", "T") + "+00:00" if isinstance(value, str)
                         else rfc3339(value))
            elif isinstance(kind, ObjectField):
                value = orjson.Fragment(value) if isinstance(value, str) else value
            elif name == "data":
                # Stored JSON text: SQLite's is compact and written as it is;
                # PostgreSQL's json_build_object spaces it out.
                value = orjson.Fragment(value) if is_sqlite() else orjson.loads(value)
            elif not isinstance(value, (str, int)):
                value = str(value)   # a UUID from PostgreSQL
        out[name] = value
    out["position"] = parse_text(row[-1])
    return out
