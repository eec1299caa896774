"""GET /api/instances/counts (CONTRACT 3.2): how many instances pass the
list's filters, in total and by field: from the instance counters
(storage.counters) when only status and instance_type filter and count,
else counted by the database from its indexes (a GROUP BY over the index
of the filter, or a label's counter).

One statement per field of `by`, each a compiled shape (storage.reads.run)
like the list's; the total is the sum of a closed set's counts when `by`
has one (every instance has a status and a type), else a statement of its
own, or a label's counter when one positive selector is the only filter.
"""
from contextlib import nullcontext

from peewee import SQL, fn

import search
from models import Instance
from routes.lists import Filtering, limited
from schemas import COUNTED
from storage import counters, db
from storage.reads import Slot, run

# Open fields list at most this many values, most frequent first.
MOST = 100


@limited
def count_response(args):
    """{"total": N, "by": {field: {value: count}}} for the list's filters in
    `args` and the fields of `args["by"]`."""
    filtering = Filtering(Instance, args)
    if counters.COUNTED.issuperset(name for name, _, _ in filtering.forms) and \
            counters.COUNTED.issuperset(args.get("by", ())):
        return counted(filtering, args.get("by", ()))
    # A count reads every match: the plan for `wanted` rows does not matter.
    plan = filtering.plan(args, 0)
    by = {}
    for name in args.get("by", ()):
        if name.startswith("label:"):
            by[name] = label_counts(filtering, plan, name[len("label:"):])
        else:
            by[name] = field_counts(filtering, plan, name)
    closed = next((by[name] for name in by if COUNTED.get(name)), None)
    if closed is not None:
        total = sum(closed.values())
    else:
        total = run(("count", *filtering.shape, plan), lambda: filtering.counted(plan),
                    filtering.values).fetchone()[0]
    return {"total": total, "by": by}


def counted(filtering, by):
    """The response from the instance counters (storage.counters), read in one
    transaction: no filter but status and instance_type, no count but by
    them. A few dozen rows, however many instances there are."""
    where = {name: [filtering.values[(name, key) if key is not None else name]
                    for key in keys] for name, _, keys in filtering.forms}
    # Several statements read one state; a single one needs no transaction
    # (BEGIN and COMMIT would be two more round trips).
    with db.atomic() if len(by) > 1 else nullcontext():
        found = {name: counters.counts(name, where) for name in by}
        total = (sum(found[by[0]].values()) if by else counters.counts(None, where))
    return {"total": total,
            "by": {name: {member: found[name].get(member, 0) for member in COUNTED[name]}
                   for name in by}}


def field_counts(filtering, plan, name):
    """A column's counts: every member of a closed set in its order (zeros
    too), or an open field's values present, most frequent first."""
    column, members = getattr(Instance, name), COUNTED[name]
    counted = fn.COUNT(SQL("*"))

    def build():
        query = filtering.where(Instance.select(column, counted), plan.count).group_by(column)
        if members:
            return query
        return (query.where(column.is_null(False))
                .order_by(counted.desc(), column).limit(MOST))

    rows = run(("counts", name, *filtering.shape, plan), build, filtering.values).fetchall()
    if members:
        found = dict(rows)
        return {member: found.get(member, 0) for member in members}
    return {str(value): count for value, count in rows}


def label_counts(filtering, plan, key):
    """The values of label `key`, most frequent first (search.label_counts)."""
    values = {**filtering.values, "label key": key}
    alone = not filtering.forms
    rows = run(("label counts", alone, *filtering.shape, plan),
               lambda: search.label_counts(Slot("label key", str), alone,
                                           lambda query: filtering.where(query, plan.count),
                                           MOST),
               values).fetchall()
    return dict(rows)
