"""The read path: query shapes compiled once, and rows read as the JSON
values the API writes, without a model instance per row.

Not here: which rows a route reads (models.py and routes/common.py).
"""
from functools import cache
from typing import NamedTuple

import orjson
from peewee import Entity, Node, UUIDField

from storage import db
from storage.engines import is_sqlite
from storage.fields import ObjectField, UTCDateTimeField


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
    """The (sql, params) that `make()` gives for `shape`, made once while
    it is among the SHAPES most recently used."""
    return db.shapes.made(shape, make)


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
    (wrk at 8 connections, bench/README.md "Where the time goes")."""
    return counted_representations(model, shape, build, values)[1]


class Written(NamedTuple):
    """SQLite: a page of rows as the JSON array the output schema writes of
    them (`wire`, see counted_representations), with what a route needs to
    know of the rows themselves: how many, and the id of the last."""
    text: str
    length: int
    last_id: object

    def __len__(self):
        return self.length

    def __bool__(self):
        return self.length > 0


def last_id(rows):
    """The id of the last of the rows counted_representations gives."""
    return rows.last_id if type(rows) is Written else rows[-1]["id"]


def counted_representations(model, shape, build, values, count=None, wire=None):
    """(total, rows): the value the query `count()` makes (a COUNT, one row
    and column), or None without `count`, and the `representations` of the
    rows `build()` makes, both bound to `values`. On SQLite both come from
    one statement: each statement is a few more GIL hand-offs under load.

    With `wire`, the (key, column) pairs of the output schema's members in
    order (schemas.Representation), SQLite writes the rows out as that
    schema would, and the rows are a `Written`: the JSON of a page of 50
    instances is then neither parsed, nor made into dicts, nor dumped
    again (together a third of a list's time in-process, bench/README.md)."""
    if wire is not None and is_sqlite():
        sql, params = compiled(("written rows", count is None, *shape), lambda: written_rows(
            model, wire, build().sql(), None if count is None else count().sql()))
        total, text, length, last = db.execute_sql(sql, bind(params, values)).fetchone()
        return total, Written(text, length, last and last.rpartition(",")[2])
    if not is_sqlite():
        return postgres_rows(model, shape, build, values, count, wire)
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


def written_rows(model, wire, select, count=None):
    """SQLite: one statement for the compiled `select` (a model.select()):
    the compiled `count` query's value (or NULL); the select's rows as one
    JSON array of objects, each member `key` the JSON of `column` (`wire`
    pairs, in order); how many rows; and their ids in order, comma
    separated, the last being what a cursor link needs. Rows are read in the
    order the ordered, limited subquery yields them, as json_rows does."""
    fields = {field.column_name: field for field in model._meta.sorted_fields}
    # One concat() per row: a chain of || copies the row's text once per link.
    members = ", ".join(
        "'" + ("{" if index == 0 else ",") + orjson.dumps(key).decode().replace("'", "''")
        + ":', " + _sqlite_json_text(fields[column], f'"row"."{column}"')
        for index, (key, column) in enumerate(wire))
    (sql, params), (count_sql, count_params) = select, count or ("NULL", [])
    return (f"SELECT ({count_sql}), '[' || coalesce(group_concat(concat({members}, '}}'), ','), "
            f"'') || ']', count(*), group_concat(\"row\".\"id\") FROM ({sql}) AS \"row\"",
            [*count_params, *params])


def postgres_rows(model, shape, build, values, count, wire):
    """PostgreSQL's counted_representations: one statement (wire_rows), its
    rows as dicts of JSON values, or with `wire` as a `Written` page that
    Python writes out once, as SQLite's written_rows does in SQL: neither a
    dict per row for the schema nor the schema's own copy of it (a third of
    a list page's instructions in-process, bench/roundtrips.py)."""
    names = [column for _, column in wire] if wire is not None else columns(model)[0]
    sql, params = compiled(("wire rows", count is None, wire is None, *shape), lambda: wire_rows(
        model, names, build().sql(), None if count is None else count().sql()))
    found = db.execute_sql(sql, bind(params, values)).fetchall()
    total, skip = None, 0
    if count is not None:
        if not found:
            # An empty page says nothing of the count: read on its own.
            found = run(("count", *shape), count, values).fetchone()
            return found and found[0], []   # no row: a nested list's missing instance
        total, skip = found[0][0], 1
    objects = [index for index, name in enumerate(names) if name in columns(model)[1]]
    keys = [key for key, _ in wire] if wire is not None else names
    rows = []
    for row in found:
        row = list(row[skip:])
        for index in objects:
            if row[index] is not None:
                row[index] = sorted_json(row[index])
        rows.append(dict(zip(keys, row)))
    if wire is None:
        return total, rows
    return total, Written(orjson.dumps(rows), len(rows), rows[-1][keys[names.index("id")]]
                          if rows else None)


def sorted_json(text):
    """PostgreSQL: a jsonb value's text as the API writes it, keys sorted at
    every depth and numbers as orjson reads them (schema_fields.JSONObject,
    storage.engines.open_postgres)."""
    return orjson.Fragment(orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS))


def wire_rows(model, names, select, count=None):
    """PostgreSQL: one statement for the compiled `select` (a model.select()):
    its columns `names` and, before them on every row, the compiled `count`
    query's value (an init plan, run once): one round trip for a list page,
    not two. Ids and timestamps come as the text the API writes: psycopg
    would make a UUID and a datetime of each, only for Python to write them
    out again; JSON objects as text, for sorted_json."""
    fields = {field.column_name: field for field in model._meta.sorted_fields}
    (sql, params), (count_sql, count_params) = select, count or (None, [])
    values = ", ".join(_postgres_wire_value(fields[name], f'"row"."{name}"') for name in names)
    total = "" if count_sql is None else f"({count_sql}), "
    return f'SELECT {total}{values} FROM ({sql}) AS "row"', [*count_params, *params]


def _postgres_wire_value(field, column):
    field = getattr(field, "rel_field", field)
    if isinstance(field, UUIDField):
        return f"{column}::text"
    if isinstance(field, UTCDateTimeField):
        # rfc3339's form: UTC, always six digits of microseconds.
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    if isinstance(field, ObjectField):
        return f"{column}::text"
    return column


def _sqlite_json_text(field, column):
    """SQLite: the JSON text of a column's value, as the API writes it."""
    if isinstance(getattr(field, "rel_field", field), ObjectField):
        # Stored as JSON text with its keys sorted: written as it is.
        return f"coalesce({column}, 'null')"
    return f"json_quote({_sqlite_json_value(field, column)})"


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
