"""Lists (CONTRACT 1.4, 2.1, 3.1): filters, order, pages, X-Total-Count and
Link, for every list; and the filters' conditions, which the instance
counts (routes/counts.py) share.

Each query is a shape compiled once (storage.reads.run): which filters are
given, in which form (how many values, which selectors), the sort, whether
there is a cursor, and on SQLite which index the label or name filter is
answered from (search.plan). The values are bound to it on each run.
"""
from datetime import timedelta
from functools import lru_cache, wraps
from typing import NamedTuple
from urllib.parse import urlencode

from flask import current_app, request
from flask_smorest import abort
from peewee import SQL, NodeList, fn
from werkzeug.sansio.utils import get_current_url

import search
from models import LOG_LEVELS, Instance, InstanceLog
from storage import counters
from storage.engines import is_sqlite, read_limit
from storage.fields import utcnow
from storage.reads import Slot, counted_representations, last_id, run
from routes.common import invalid, matching, not_found, noun

PAGING = ("limit", "offset", "sort", "after", "wait")
# Arguments that are not filters: paging, and what counts group by.
NOT_FILTERS = frozenset((*PAGING, "by"))
MAX_OFFSET = 2**63 - 1
# Filters by an id, whose index leaves few rows (search.plan).
NARROWING = frozenset(("site_id", "user_id", "agent_id", "parent_id"))


def as_is(value):
    """A Slot's conversion for values already in the form the SQL compares."""
    return value


class Filter(NamedTuple):
    """A filter that is not "column equals value" (a list: "column in list").
    `bind(value)` gives (form, values): the shape's part and the values to
    bind, by key; `condition(model, form, slots, drive)` the condition, given
    the Slots by the same keys and whether this filter drives the query."""
    bind: object
    condition: object
    raw: bool = False   # bound as they are, not converted as the column's values


def bind_column(value):
    if isinstance(value, list):
        return len(value), dict(enumerate(value))
    return None, {None: value}


def column_condition(column, form, slots):
    return column == slots[None] if form is None else column.in_(list(slots.values()))


def bind_min_level(level):
    return bind_column(list(LOG_LEVELS[LOG_LEVELS.index(level):]))


def bind_idle_for(seconds):
    """idle_for=N: last active at or before N seconds ago."""
    return None, {None: utcnow() - timedelta(seconds=seconds)}


def bind_search(text):
    values = search.search_values(text)
    return len(values), dict(enumerate(values))


def bind_selectors(selectors):
    values = {(index, position): value for index, selector in enumerate(selectors)
              for position, value in enumerate(search.selector_values(selector))}
    return tuple((selector.op, len(search.selector_values(selector)))
                 for selector in selectors), values


def selectors_condition(model, form, slots, drive):
    return [search.selector_condition(
        op, [slots[(index, position)] for position in range(width)], drive == index)
        for index, (op, width) in enumerate(form)]


FILTERS = {
    "q": Filter(bind_search, lambda model, form, slots, drive: search.search_condition(
        list(slots.values()), drive == "q"), raw=True),
    "label": Filter(bind_selectors, selectors_condition, raw=True),
    "min_level": Filter(bind_min_level, lambda model, form, slots, drive: column_condition(
        model.level, form, slots)),
    "since": Filter(bind_column, lambda model, form, slots, drive:
                    model.created_at >= slots[None]),
    "until": Filter(bind_column, lambda model, form, slots, drive:
                    model.created_at < slots[None]),
    # CONTRACT 4.1, each a range of its own index.
    "idle_for": Filter(bind_idle_for, lambda model, form, slots, drive:
                       model.last_activity_at <= slots[None]),
    "expires_before": Filter(bind_column, lambda model, form, slots, drive:
                             model.expires_at < slots[None]),
}


class Filtering:
    """The filters among a list's arguments (all but NOT_FILTERS), bound: `shape`
    (hashable, for the compiled query), `values` (by Slot name), and the
    `conditions` a query adds to its WHERE. `scope` (column: value) are
    conditions of their own, a nested list's instance."""

    def __init__(self, model, args, scope=None):
        self.model, self.scope = model, dict(scope or {})
        self.values, self.forms = dict(self.scope), []
        for name, value in args.items():
            if name in NOT_FILTERS:
                continue
            form, values = (FILTERS[name].bind if name in FILTERS else bind_column)(value)
            self.values.update(((name, key) if key is not None else name, item)
                               for key, item in values.items())
            self.forms.append((name, form, tuple(values)))
        self.shape = (model, *self.scope, *((name, form) for name, form, _ in self.forms))

    def conditions(self, drive=None, on=None, scoped=True):
        """The WHERE conditions; `drive` names the filter that lists the rows
        (search.plan), if one does. `on`: another model with the filtered
        columns (the instance counters). `scoped`: with the scope's."""
        on = on or self.model
        found = matching(on, self.scope) if scoped else []
        for name, form, keys in self.forms:
            kind = FILTERS.get(name)
            convert = as_is if kind and kind.raw else None
            slots = {key: Slot((name, key) if key is not None else name, convert)
                     for key in keys}
            if kind is None:
                found.append(column_condition(getattr(on, name), form, slots))
                continue
            made = kind.condition(on, form, slots, drive)
            found.extend(made if isinstance(made, list) else [made])
        return found

    def where(self, query, drive=None):
        conditions = self.conditions(drive)
        return query.where(*conditions) if conditions else query

    def plan(self, args, wanted):
        """Which filter lists the rows of a page of `wanted` rows and of its
        count (search.plan: SQLite, label and name filters only)."""
        if "label" not in args and "q" not in args:
            return search.Plan()
        names = [name for name, _, _ in self.forms]
        q = [self.values[("q", key)] for key in range(2) if ("q", key) in self.values]
        return search.plan(args.get("label", ()), q if "q" in args else None, wanted,
                           only_labels=names == ["label"] and not self.scope,
                           narrowed=bool(self.scope) or not NARROWING.isdisjoint(names),
                           newest_first=args.get("sort", [("created_at", True)]) == [
                               ("created_at", True)] and "after" not in args)

    def label_slots(self, index):
        """The Slots of the `label` filter's selector `index`."""
        form = dict((name, form) for name, form, _ in self.forms)["label"]
        return [Slot(("label", (index, position)), as_is) for position in range(form[index][1])]

    def counted(self, plan):
        """The query of the number of matching rows, for `plan`."""
        if [name for name, _, _ in self.forms] == ["label"] and not self.scope:
            [(_, form, _)] = self.forms
            if plan.alone:
                return search.counted_alone(form[0][0], self.label_slots(0))
            if all(op not in search.POSITIVE for op, _ in form):
                return search.counted_complement(
                    [op for op, _ in form], [self.label_slots(index) for index in range(len(form))])
        return self.where(self.model.select(fn.COUNT(SQL("*"))), plan.count)


def limited(read):
    """`read` under the read time limit (INSTANCES_QUERY_TIMEOUT): a list or
    a count, the reads that a large table can make slow. A GET by id reads
    one row by its key and goes without; writes are never limited."""
    @wraps(read)
    def limited_read(*args, **kwargs):
        with read_limit(current_app.config["QUERY_TIMEOUT"]):
            return read(*args, **kwargs)
    return limited_read


@limited
def list_response(model, schema, args, instance_id=None, kept_count=None):
    """One page of `model`'s rows: those of the instance `instance_id` (a
    nested list; 404 when there is no such instance) that pass every
    non-paging argument (named after its column, or in FILTERS), with
    X-Total-Count and Link, for the output `schema` to write.

    The order is `sort` with newest first as the tie-break, or commit order
    (seq) after the `after` cursor, which only logs take. `kept_count`, a
    column of the instance that keeps the number of its rows, is the total
    of an unfiltered list instead of counting. The count (which for a nested
    list also tells whether the instance exists) and the page are one
    statement where the engine allows (storage.reads.counted_representations).
    """
    scope = {} if instance_id is None else {"instance": instance_id}
    filtering = Filtering(model, args, scope)
    values = filtering.values
    # The cursor is a position, like offset: the total ignores it, so a page
    # costs the same at any depth, and a tailer sees how long the log is.
    after = "after" in args
    if after:
        values["after"] = args["after"]
    sort = tuple(args.get("sort", ()))
    limit, offset = args["limit"], args["offset"]
    # 1.6: an offset past the end is an empty page, however large; both
    # engines refuse one beyond 64 bits, and no list is that long.
    values["limit"], values["offset"] = limit, min(offset, MAX_OFFSET)
    plan = filtering.plan(args, limit + min(offset, MAX_OFFSET))

    def count():
        if model is Instance and instance_id is None and counters.COUNTED.issuperset(
                name for name, _, _ in filtering.forms):
            # No filter but status or type: the sum of their counters.
            return counters.total(filtering.conditions(on=counters.COUNTERS))
        counted = filtering.counted(plan)
        if instance_id is None:
            return counted
        # One row, or none (a NULL total) when there is no such instance.
        return Instance.select(counted if filtering.forms or kept_count is None
                               else kept_count).where(Instance.id == Slot("instance"))

    def page():
        if plan.ordered:
            query = search.ordered_page(filtering.label_slots(0))
            return query.limit(Slot("limit")).offset(Slot("offset"))
        if scope and not after and not is_sqlite():
            return scoped_page(model, scope, filtering.conditions(plan.page, scoped=False),
                               ordering(model, sort)).limit(Slot("limit")).offset(Slot("offset"))
        query = filtering.where(model.select(), plan.page)
        if after:
            query = query.where(after_cursor(model, scope)).order_by(model.seq)
        else:
            query = query.order_by(*ordering(model, sort))
            if not scope and not filtering.forms:
                query = query.from_(model.read_in_order_of(sort))
        return query.limit(Slot("limit")).offset(Slot("offset"))

    total, rows = counted_representations(
        model, ("page", *filtering.shape, sort, after, plan), page, values, count, schema.wire())
    if total is None:
        not_found(Instance, instance_id)
    if after and not rows and not in_list(model, scope, values):
        # An empty page after a cursor: the end of the list, or no such row.
        # Or the instance was deleted since its count was read (PostgreSQL
        # reads each statement at its own moment), which is a 404, not a bad
        # cursor.
        if instance_id is not None and not Instance.select().where(
                Instance.id == instance_id).exists():
            not_found(Instance, instance_id)
        if model is InstanceLog and InstanceLog.was_purged(instance_id, args["after"]):
            abort(410, message=f"The log {args['after']} was deleted by the retention "
                               "settings; start again without after.")
        invalid("query", "after", f"No {noun(model)} with id {args['after']} in this list.")
    headers = {"X-Total-Count": str(total)}
    link = cursor_link(rows) if after else page_links(total, limit, offset)
    if link:
        headers["Link"] = link
    return rows, headers


def ordering(model, sort):
    """ORDER BY for `sort` pairs, made total: created_at (newest first unless
    sorted on) and then id break ties, so pages never repeat or skip a row."""
    keys = [model.sort_key(name).desc() if descending else model.sort_key(name).asc()
            for name, descending in sort]
    newest_first = dict(sort).get("created_at", True)
    if "created_at" not in dict(sort):
        keys.append(model.created_at.desc())
    keys.append(model.id.desc() if newest_first else model.id.asc())
    return keys


def scoped_page(model, scope, conditions, order):
    """PostgreSQL: a page of an instance's rows (`scope`) in `order`, read
    from the index that leads with the instance. With `instance_id = $1`
    the planner drops the instance from the ORDER BY (it is one value) and
    is free to walk the fleet-wide created_at index backwards instead,
    which it does for an instance with many logs: it takes them to be
    spread over time, and steps past every newer log of every other
    instance (133 ms for a page after 600,000 logs appended elsewhere,
    against 0.07 ms). As `= ANY(ARRAY[$1])` the instance stays in the
    ORDER BY, which only its own index gives in order."""
    direction = "desc" if order[0].direction == "DESC" else "asc"
    columns = [getattr(model, name) for name in scope]
    held = [column == fn.ANY(NodeList((SQL("ARRAY["), Slot(column.name, column.db_value),
                                       SQL("]::uuid[]")), glue=""))
            for column in columns]
    return model.select().where(*held, *conditions).order_by(
        *(getattr(column, direction)() for column in columns), *order)


def in_list(model, scope, values):
    """Whether the `after` id names a row of this list."""
    return run(("cursor", model, *scope), lambda: model.select(SQL("1")).where(
        *matching(model, scope), model.id == Slot("after")), values).fetchone() is not None


def after_cursor(model, scope):
    """Rows committed after the row the cursor marks (the `after` id, in
    `scope`): a seq past its seq, an index range from that row onwards, with
    no offset to skip over however deep. Not created_at: a row stamped
    earlier can commit later (log_triggers.py), and a follower past it
    would never see it. The marked row's seq is a subquery of the page's own
    statement, read once, not a lookup of its own."""
    return model.seq > model.select(model.seq).where(
        *matching(model, scope), model.id == Slot("after"))


def cursor_link(rows):
    """The next page after a cursor page starts after its last row."""
    if rows:
        return f'<{page_url(base_url(), after=last_id(rows), offset=None)}>; rel="next"'
    return None


def page_links(total, limit, offset):
    """RFC 8288 next/prev links that keep every other query parameter.

    With limit=0 there is no next page to walk to, so no links are given.
    """
    if limit == 0:
        return None
    links = []
    if offset + limit < total:
        links.append((offset + limit, "next"))
    if offset > 0:
        links.append((max(0, min(offset, total) - limit), "prev"))
    base = base_url()
    return ", ".join(f'<{page_url(base, offset=page_offset)}>; rel="{rel}"'
                     for page_offset, rel in links)


def base_url():
    """request.base_url, which werkzeug works out anew on each use (IDNA,
    unquoting, quoting: a twentieth of a list page's time in-process); the
    same for each (scheme, host, root, path), so made once for each."""
    return _base_url(request.scheme, request.host, request.root_path, request.path)


@lru_cache(maxsize=1024)
def _base_url(scheme, host, root_path, path):
    return get_current_url(scheme, host, root_path, path)


def page_url(base, **changes):
    """This request's URL (`base`, without the query) with the parameters in
    `changes` replaced (None drops one)."""
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in changes]
    params.extend((k, v) for k, v in changes.items() if v is not None)
    return f"{base}?{urlencode(params)}"
