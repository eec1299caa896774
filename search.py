"""Finding instances by label (CONTRACT 3.1) and by a part of their name
(`q`, 2.1) through indexes of their own, on either engine, and counting
them by label (3.2).

SQLite keeps, in the transaction of every write to `instance` (triggers, so
whatever writes the row keeps them: the API, group commit, a bulk seed):
- `instance_label` (key, value, instance_id, created_at), one row per label:
  its key (key, instance_id) answers `key`, `!key` and `key=value` or
  `key!=value` for one instance, its index (key, value, created_at,
  instance_id) lists the instances of a `key=value`, newest first;
- `instance_label_count` and `instance_label_key_count`: how many instances
  have each label and each key, kept by triggers on `instance_label`, so a
  filter of one selector counts its rows in one lookup, and the plan below
  knows how selective each selector is;
- `instance_search`, an FTS5 trigram index of each name folded as `q` folds
  it (Python's casefold, the `casefold` function each connection registers),
  keyed by the instance's rowid. A search of 3 or more characters reads it;
  shorter ones have no trigram to look up and read the rows.

PostgreSQL keeps `labels` as jsonb with a GIN index (`labels @> '{"k":"v"}'`,
`labels ? 'k'`), and a pg_trgm GIN index on lower(name) that a LIKE of the
search text reads; its planner weighs them against the other indexes itself.
Without the pg_trgm extension (CREATE EXTENSION refused), `q` reads the rows.
Since schema version 14 it keeps the same label rows and counters too
(storage.label_rows), for one selector alone: its page newest first
(ordered_page) and its count (counted_alone).

Rows read in order are tested exactly (engines.contains_folded). On SQLite
the trigram index's answer is final: a phrase of 3 or more characters
matches exactly the folded names that contain it, as the exact test would
(tests/test_search.py holds the two to the same answers, Unicode folding
included), and the test, a call into Python per row, was a tenth of a
search's instructions. PostgreSQL's LIKE is followed by the exact test.

Not here: the grammar of selectors (labels.py), where the conditions go in a
list (routes/lists.py), the instance table (models.py).
"""
import logging
import math
import operator
from functools import reduce
from typing import NamedTuple

import orjson
from peewee import (
    JOIN, SQL, Cast, Column, CompositeKey, Expression, IntegerField, Model, NodeList,
    TextField, fn,
)

from labels import DIFFERS, EQUALS, HAS, LACKS, POSITIVE
from models import Instance
from storage import counters, db
from storage import label_rows as postgres_label_rows
from storage.engines import contains_folded, fold, is_sqlite

log = logging.getLogger("instance_api")

# Trigrams need 3 characters: a shorter search reads the rows.
TRIGRAM = 3


class InstanceLabel(Model):
    """One row per label of an instance (kept by triggers; on PostgreSQL
    without active_at)."""
    key = TextField()
    value = TextField()
    instance_id = TextField()
    created_at = TextField()   # the instance's, as stored
    active_at = TextField()    # the instance's last_activity_at (LABEL_ACTIVITY)

    class Meta:
        database = db
        table_name = "instance_label"
        primary_key = CompositeKey("key", "instance_id")


class InstanceSearch(Model):
    """SQLite: the trigram index of the folded names, by the instance's rowid."""
    rowid = IntegerField(primary_key=True)
    name = TextField()

    class Meta:
        database = db
        table_name = "instance_search"


class InstanceLabelCount(Model):
    """How many instances have each label (kept by triggers; summed over
    the shards of its rows on PostgreSQL, storage.label_rows)."""
    key = TextField()
    value = TextField()
    instances = IntegerField()

    class Meta:
        database = db
        table_name = "instance_label_count"
        primary_key = CompositeKey("key", "value")


class InstanceLabelKeyCount(Model):
    """How many instances have each label key (as InstanceLabelCount)."""
    key = TextField(primary_key=True)
    instances = IntegerField()

    class Meta:
        database = db
        table_name = "instance_label_key_count"


SQLITE = (
    """
    CREATE TABLE IF NOT EXISTS instance_label (
        key TEXT NOT NULL, value TEXT NOT NULL, instance_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (key, instance_id)) WITHOUT ROWID""",
    # With the instance's created_at (which never changes), so that a page
    # of one label, newest first, is a range of this index in order.
    """
    CREATE UNIQUE INDEX IF NOT EXISTS instance_label_value
        ON instance_label (key, value, created_at, instance_id)""",
    """
    CREATE TABLE IF NOT EXISTS instance_label_count (
        key TEXT NOT NULL, value TEXT NOT NULL, instances INTEGER NOT NULL,
        PRIMARY KEY (key, value)) WITHOUT ROWID""",
    """
    CREATE TABLE IF NOT EXISTS instance_label_key_count (
        key TEXT NOT NULL PRIMARY KEY, instances INTEGER NOT NULL) WITHOUT ROWID""",
    # json_each('{}') has no rows: an instance without labels costs a parse.
    """
    CREATE TRIGGER IF NOT EXISTS instance_labels_added AFTER INSERT ON instance
    BEGIN
        INSERT INTO instance_label (key, value, instance_id, created_at)
        SELECT key, value, new.id, new.created_at FROM json_each(new.labels);
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_labels_changed AFTER UPDATE OF labels ON instance
    WHEN old.labels IS NOT new.labels
    BEGIN
        DELETE FROM instance_label
        WHERE instance_id = old.id AND key IN (SELECT key FROM json_each(old.labels));
        INSERT INTO instance_label (key, value, instance_id, created_at)
        SELECT key, value, new.id, new.created_at FROM json_each(new.labels);
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_labels_removed AFTER DELETE ON instance
    BEGIN
        DELETE FROM instance_label
        WHERE instance_id = old.id AND key IN (SELECT key FROM json_each(old.labels));
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_label_counted AFTER INSERT ON instance_label
    BEGIN
        INSERT INTO instance_label_count (key, value, instances) VALUES (new.key, new.value, 1)
        ON CONFLICT (key, value) DO UPDATE SET instances = instances + 1;
        INSERT INTO instance_label_key_count (key, instances) VALUES (new.key, 1)
        ON CONFLICT (key) DO UPDATE SET instances = instances + 1;
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_label_uncounted AFTER DELETE ON instance_label
    BEGIN
        UPDATE instance_label_count SET instances = instances - 1
        WHERE key = old.key AND value = old.value;
        DELETE FROM instance_label_count
        WHERE key = old.key AND value = old.value AND instances = 0;
        UPDATE instance_label_key_count SET instances = instances - 1 WHERE key = old.key;
        DELETE FROM instance_label_key_count WHERE key = old.key AND instances = 0;
    END""",
    # The names, folded, by the rowid of their row: a rowid that VACUUM and
    # VACUUM INTO (backups) keep for a table with indexes, which instance
    # has (tests/test_search.py checks both). contentless_delete (SQLite
    # 3.43) deletes an entry by rowid alone, whatever casefold gave when it
    # was added.
    """
    CREATE VIRTUAL TABLE IF NOT EXISTS instance_search USING fts5(
        name, content='', contentless_delete=1, tokenize='trigram case_sensitive 1')""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_search_added AFTER INSERT ON instance
    BEGIN
        INSERT INTO instance_search (rowid, name) VALUES (new.rowid, casefold(new.name));
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_search_renamed AFTER UPDATE OF name ON instance
    WHEN old.name IS NOT new.name
    BEGIN
        DELETE FROM instance_search WHERE rowid = old.rowid;
        INSERT INTO instance_search (rowid, name) VALUES (new.rowid, casefold(new.name));
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_search_removed AFTER DELETE ON instance
    BEGIN
        DELETE FROM instance_search WHERE rowid = old.rowid;
    END""",
)

# SQLite, schema version 13: each label row also holds its instance's
# last_activity_at, so that a label's instances in order of activity are a
# range of one index (feed_reads.Query.merged_page: the fleet's logs by
# label). Kept by triggers: a label row takes its instance's activity as it
# is added; a change of activity (at most once a second, log_triggers.py)
# is copied to the instance's label rows. Apart from SQLITE, which version 7
# made, because these name last_activity_at, which version 9 added.
LABEL_ACTIVITY = (
    # Partial, though every row has an activity: so that only a query that
    # says `active_at > ''` can read it, and the lists by label keep
    # instance_label_value, whose order is theirs.
    """
    CREATE INDEX IF NOT EXISTS instance_label_activity
        ON instance_label (key, value, active_at) WHERE active_at > ''""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_label_active AFTER INSERT ON instance_label
    BEGIN
        UPDATE instance_label
        SET active_at = (SELECT last_activity_at FROM instance WHERE id = new.instance_id)
        WHERE key = new.key AND instance_id = new.instance_id;
    END""",
    """
    CREATE TRIGGER IF NOT EXISTS instance_labels_active AFTER UPDATE OF last_activity_at
    ON instance
    WHEN old.last_activity_at IS NOT new.last_activity_at AND new.labels <> '{}'
    BEGIN
        UPDATE instance_label SET active_at = new.last_activity_at
        WHERE instance_id = new.id AND key IN (SELECT key FROM json_each(new.labels));
    END""",
)

# GIN indexes written through (fastupdate off), not through a pending list:
# a search reads the whole list, and each instance created since the last
# merge (by autovacuum or when it reaches 4 MB) is one more entry in it. After
# 30,000 creates, `q=gpu` on 31,000 instances took 9-13 ms, the planner
# preferring to read every row; with the list merged, 0.1 ms
# (bench/README.md). Each create then costs a few entries in the index itself.
GIN = "WITH (fastupdate = off)"
POSTGRESQL = [f"CREATE INDEX IF NOT EXISTS instance_labels ON instance USING gin (labels) {GIN}"]
GIN_INDEXES = ("instance_labels", "instance_name_trigrams")


def create_indexes():
    """Create whatever is missing of the label and name indexes, in the
    caller's transaction (migrations.create_tables)."""
    for statement in SQLITE if is_sqlite() else POSTGRESQL:
        db.execute_sql(statement)
    if not is_sqlite():
        postgres_label_rows.create()
        create_trigram_index()


def create_label_activity():
    """SQLite: the label rows' activity (LABEL_ACTIVITY), its column filled
    in for the rows already there when it is new (schema version 13)."""
    if not is_sqlite():
        return
    columns = [row[1] for row in db.execute_sql("PRAGMA table_info(instance_label)")]
    if "active_at" not in columns:
        db.execute_sql("ALTER TABLE instance_label ADD COLUMN active_at TEXT NOT NULL DEFAULT ''")
        db.execute_sql("UPDATE instance_label SET active_at = (SELECT last_activity_at "
                       "FROM instance WHERE instance.id = instance_label.instance_id)")
    for statement in LABEL_ACTIVITY:
        db.execute_sql(statement)


def fill_indexes():
    """Index the rows already there (a database migrated to version 7)."""
    if is_sqlite():
        db.execute_sql("DELETE FROM instance_search")
        db.execute_sql("INSERT INTO instance_search (rowid, name) "
                       "SELECT rowid, casefold(name) FROM instance")
        db.execute_sql("DELETE FROM instance_label")
        db.execute_sql("INSERT INTO instance_label (key, value, instance_id, created_at) "
                       "SELECT each.key, each.value, instance.id, instance.created_at "
                       "FROM instance, json_each(instance.labels) AS each")


def create_trigram_index():
    """PostgreSQL: the pg_trgm index of lower(name), creating the extension
    if need be. An extension is the database owner's to install: when
    PostgreSQL refuses, the service starts all the same and `q` reads the
    rows, with one line in the log (checked again at every start)."""
    if has_trigram_index():
        return
    try:
        with db.atomic():   # a savepoint: a refusal leaves the migration going
            db.execute_sql(TRIGRAM_EXTENSION)
    except Exception as exc:   # noqa: BLE001 -- whatever the reason, search without it
        log.warning("PostgreSQL refused %r (%s): searching names with q reads every row "
                    "until the pg_trgm extension is installed (then restart)",
                    TRIGRAM_EXTENSION, str(exc).strip().splitlines()[0])
        return
    schema = db.execute_sql("SELECT extnamespace::regnamespace::text FROM pg_extension "
                            "WHERE extname = 'pg_trgm'").fetchone()[0]
    log.info("Building the trigram index of instance names (pg_trgm)")
    db.execute_sql("CREATE INDEX IF NOT EXISTS instance_name_trigrams ON instance "
                   f"USING gin (lower(name) {schema}.gin_trgm_ops) {GIN}")


def write_through_gin():
    """PostgreSQL: the GIN indexes of a database made before version 14
    written through (GIN), their pending lists merged now."""
    for index in GIN_INDEXES:
        if db.execute_sql("SELECT to_regclass(%s)", (index,)).fetchone()[0] is None:
            continue
        db.execute_sql(f"ALTER INDEX {index} SET (fastupdate = off)")
        db.execute_sql("SELECT gin_clean_pending_list(%s::regclass)", (index,))


TRIGRAM_EXTENSION = "CREATE EXTENSION IF NOT EXISTS pg_trgm"


def has_trigram_index():
    return db.execute_sql("SELECT to_regclass('instance_name_trigrams')").fetchone()[0] \
        is not None


# -- label selectors -------------------------------------------------------------

def selector_values(selector):
    """What a selector's condition binds: its key (and value); on PostgreSQL
    last, for a value, the jsonb object a `key=value` contains (the GIN
    index's condition; the label rows take the key and value)."""
    if selector.value is None:
        return [selector.key]
    if is_sqlite():
        return [selector.key, selector.value]
    return [selector.key, selector.value, orjson.dumps({selector.key: selector.value}).decode()]


def selector_condition(op, slots, drive=False):
    """The condition that an instance of the outer query (Instance) holds the
    selector `op` bound to `slots` (selector_values). SQLite: a `drive`n
    positive selector lists its instances from the label index (IN); any
    other looks its row up for each instance the query reads (EXISTS)."""
    if not is_sqlite():
        column = Instance.labels
        if op in (EQUALS, DIFFERS):
            holds = Expression(column, "@>", Cast(slots[-1], "jsonb"))
        else:
            holds = Expression(column, "?", slots[0])
        return holds if op in POSITIVE else ~holds
    matches = label_rows(op, slots)
    if drive:
        return Instance.id.in_(InstanceLabel.select(InstanceLabel.instance_id).where(*matches))
    found = fn.EXISTS(InstanceLabel.select(SQL("1")).where(
        *matches, InstanceLabel.instance_id == Instance.id))
    return found if op in POSITIVE else ~found


def label_rows(op, slots):
    """SQLite: the conditions on InstanceLabel of the rows that a selector
    `op` bound to `slots` is about (held, for a positive one)."""
    matches = [InstanceLabel.key == slots[0]]
    if op in (EQUALS, DIFFERS):
        matches.append(InstanceLabel.value == slots[1])
    return matches


def counted_alone(op, slots):
    """The number of instances that hold one selector, from the label
    counters: 0 when no instance has the label; for a negative one, the
    instances less those that have it, both from counters."""
    if op in (EQUALS, DIFFERS):
        counts = InstanceLabelCount
        having = counts.select(fn.COALESCE(fn.SUM(counts.instances), 0)).where(
            counts.key == slots[0], counts.value == slots[1])
    else:
        counts = InstanceLabelKeyCount
        having = counts.select(fn.COALESCE(fn.SUM(counts.instances), 0)).where(
            counts.key == slots[0])
    if op in POSITIVE:
        return having
    everyone = counters.COUNTERS
    return everyone.select(fn.COALESCE(fn.SUM(everyone.instances), SQL("0")) - having)


def ordered_page(slots):
    """The instances with the label `key=value` (its slots), newest
    first, as a range of the label index (key, value, created_at,
    instance_id) read in order, each instance then found by its id: a page
    of 50 reads 50 index entries, however many instances have the label.
    CROSS JOIN keeps SQLite to that order of tables; PostgreSQL's planner
    takes it for a LIMIT of the index's order."""
    return (InstanceLabel.select(*Instance._meta.sorted_fields)
            .join(Instance, JOIN.CROSS)
            .where(InstanceLabel.key == slots[0], InstanceLabel.value == slots[1],
                   Instance.id == InstanceLabel.instance_id)
            .order_by(InstanceLabel.created_at.desc(), InstanceLabel.instance_id.desc()))


def counted_complement(ops, slots):
    """The number of instances that hold none of the positive forms of the
    negative selectors `ops` (each with its slots): all instances less those
    that match any of them, so that both counts read indexes (the label or
    GIN index for the match, the smallest index for all), where testing
    every instance for the negation would read them all."""
    positive = {DIFFERS: EQUALS, LACKS: HAS}
    conditions = [selector_condition(positive[op], op_slots, drive=True)
                  for op, op_slots in zip(ops, slots)]
    matching = Instance.select(fn.COUNT(SQL("*"))).where(reduce(operator.or_, conditions))
    return Instance.select(fn.COUNT(SQL("*")) - matching)


def label_counts(key, alone, where, most):
    """The query of (value, instances) for label `key` (a Slot): the values
    present, most frequent first, ties by value (code point order on both
    engines), at most `most`. `where(query)` adds the list's filters; with
    none (`alone`), SQLite reads the label's counters."""
    if is_sqlite():
        if alone:
            counts = InstanceLabelCount
            return (counts.select(counts.value, counts.instances).where(counts.key == key)
                    .order_by(counts.instances.desc(), counts.value).limit(most))
        # The filtered instances first (CROSS JOIN keeps SQLite to that
        # order), each one's label by the key (key, instance_id): SQLite
        # would rather read every instance with the key, and look each up.
        counted = fn.COUNT(SQL("*"))
        query = (Instance.select(InstanceLabel.value, counted)
                 .join(InstanceLabel, JOIN.CROSS)
                 .where(InstanceLabel.key == key, InstanceLabel.instance_id == Instance.id))
        return (where(query).group_by(InstanceLabel.value)
                .order_by(counted.desc(), InstanceLabel.value).limit(most))
    # By position: the key is a parameter in each place it is written, and
    # PostgreSQL would not take two parameters for the same expression.
    value = NodeList((Expression(Instance.labels, "->>", key), SQL('COLLATE "C"')))
    counted = fn.COUNT(SQL("*"))
    query = Instance.select(value, counted).where(Expression(Instance.labels, "?", key))
    return where(query).group_by(SQL("1")).order_by(SQL("2 DESC"), SQL("1")).limit(most)


# -- q ----------------------------------------------------------------------------

def search_values(text):
    """What `q` binds: the folded text, and for 3 characters or more what
    the trigram index is asked (an FTS5 phrase; a LIKE pattern)."""
    folded = fold(text)
    if len(folded) < TRIGRAM:
        return [folded]
    if is_sqlite():
        return [folded, '"' + folded.replace('"', '""') + '"']
    escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [folded, f"%{escaped}%"]


def search_condition(slots, drive=False):
    """Names that contain the searched text (search_values, as `slots`). On
    SQLite the trigram index lists them when `drive`n, and nothing else
    tests them; else the rows read are tested one by one, in the order of
    the page."""
    exact = contains_folded(Instance.name, slots[0])
    if len(slots) == 1:
        return exact
    if not is_sqlite():
        return exact & Expression(fn.lower(Instance.name), "LIKE", slots[1])
    if not drive:
        return exact
    found = InstanceSearch.select(InstanceSearch.rowid).where(
        Expression(InstanceSearch.name, "MATCH", slots[1]))
    return Column(Instance, "rowid").in_(found)


# -- planning (SQLite) ---------------------------------------------------------------

# SQLite's planner, with no statistics, drives every label selector from
# the label index, and any name search from the trigram index: right for a
# selector or a text that few instances match, and ruinous for one that a
# fifth of them do (20,000 lookups and a sort, for a page of 50). Reading
# the page's index in order and testing each row is the better plan then:
# it stops at the page's end. Which one is cheaper is decided here from
# the counters: driving costs about 4 times as much per row matched as
# testing a row read in order.
DRIVE_COST = 4
# The trigram index has no counter: its matches are counted up to this,
# and a text that matches more reads the rows in order.
SEARCH_PROBE = 1024
# What a site_id, user_id or agent_id filter is taken to leave of the
# table: one site's or user's instances, read from that filter's index and
# tested, unless a selector has fewer.
NARROWED = 1000


class Plan(NamedTuple):
    """Which filter drives a page and which its count (None: the page's
    order, or the index of another filter, tests them row by row); whether
    the count comes from the label counters (one selector alone); whether
    the page is a range of the label index in order (ordered_page)."""
    page: object = None
    count: object = None
    alone: bool = False
    ordered: bool = False


def matched_count(selector):
    """SQLite: a scalar subquery of the instances a positive `selector`
    matches, read from the label counters, and its parameters."""
    if selector.op == EQUALS:
        return ("(SELECT instances FROM instance_label_count WHERE key = ? AND value = ?)",
                [selector.key, selector.value])
    return "(SELECT instances FROM instance_label_key_count WHERE key = ?)", [selector.key]


def plan(selectors, search, wanted, only_labels, narrowed, newest_first):
    """Which of the positive `selectors` (by index) or the `search`
    (search_values, as "q") drives a page of `wanted` rows (limit + offset)
    and its count; `only_labels`: the selectors are the only filter;
    `narrowed`: an id filter leaves few rows to test; `newest_first`: the
    page is in the default order. On SQLite, one statement: the counters of
    the selectors and the size of the table. None, on either engine, for one
    `key=value` alone, newest first, the dashboard's question: its page
    reads the label index in order, whatever the label's share, and its
    counter is the count. One selector alone is counted from the counters
    on both; PostgreSQL's planner decides the rest."""
    candidates = [(index, selector) for index, selector in enumerate(selectors)
                  if selector.op in POSITIVE]
    searching = search is not None and len(search) > 1
    alone = only_labels and len(selectors) == 1
    if alone and newest_first and selectors[0].op == EQUALS:
        return Plan(alone=True, ordered=True)
    if not is_sqlite() or not (candidates or searching):
        return Plan(alone=alone)
    parts, params = ["(SELECT max(rowid) FROM instance)"], []
    for _, selector in candidates:
        part, values = matched_count(selector)
        parts.append(part)
        params += values
    if searching:
        parts.append('(SELECT count(*) FROM (SELECT 1 FROM "instance_search" '
                     'WHERE "instance_search" MATCH ? LIMIT ?))')
        params += [search[1], SEARCH_PROBE]
    table, *sizes = db.execute_sql(f"SELECT {', '.join(parts)}", params).fetchone()
    # max(rowid) counts the deleted rows too: an estimate, enough here.
    table = min(table or 0, NARROWED) if narrowed else table or 0
    matched = {index: size or 0 for (index, _), size in zip(candidates, sizes)}
    if searching:
        matched["q"] = sizes[-1] if sizes[-1] < SEARCH_PROBE else math.inf
    driver, fewest = min(matched.items(), key=lambda item: item[1])
    # A page: driving reads `fewest` rows and sorts them; reading in order
    # and testing reads about `wanted` rows for each `fewest / table` of
    # them that match.
    page = driver if fewest * fewest * DRIVE_COST <= max(wanted, 1) * table else None
    # A count reads every match either way: driven, `fewest` rows; in order,
    # every row the other filters leave (at most the table). A name search
    # that matches too many to count is still cheaper driven than reading
    # every name.
    count = driver if fewest * DRIVE_COST <= table else None
    if count is None and searching and not narrowed:
        count = "q"
    return Plan(page, count, alone)
