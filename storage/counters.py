"""Instances by (status, instance_type), kept by the database in the
transaction of every write (CONTRACT 3.2, issue 26): the unfiltered counts,
those by status or type and their filters read a few dozen counter rows
instead of counting the table, so they cost the same at 100,000 instances
as at 1,000.

`instance_count` holds a number of instances per (status, instance_type,
shard); a count is the sum over the shards. SQLite has one writer at a
time and one shard (0). On PostgreSQL, concurrent creates of the same
status and type would queue on one counter row, each holding its lock
until it commits; the shard is the writing connection's backend pid modulo
SHARDS, so connections update rows of their own and rarely meet.

Triggers keep the rows: an insert adds, a delete subtracts, an update of
status or instance_type (only then: `UPDATE OF ... WHEN`, so a log's
log_count update does not fire them) moves one from the old pair to the
new. Rows may reach 0, or go below on one shard while another is above;
only sums are read.

Not here: the routes that answer from them (routes/counts.py,
routes/lists.py) or the label counters (search.py).
"""
from peewee import SQL, BigIntegerField, CompositeKey, IntegerField, Model, TextField, fn

from storage import db
from storage.engines import is_sqlite

SHARDS = 16
TABLE = """
    CREATE TABLE IF NOT EXISTS instance_count (
        status TEXT NOT NULL, instance_type TEXT NOT NULL, shard INTEGER NOT NULL,
        instances BIGINT NOT NULL,
        PRIMARY KEY (status, instance_type, shard))"""

SQLITE_TRIGGERS = [
    TABLE + " WITHOUT ROWID", """
    CREATE TRIGGER IF NOT EXISTS instance_counted AFTER INSERT ON instance
    BEGIN
        INSERT INTO instance_count (status, instance_type, shard, instances)
        VALUES (new.status, new.instance_type, 0, 1)
        ON CONFLICT (status, instance_type, shard) DO UPDATE SET instances = instances + 1;
    END""", """
    CREATE TRIGGER IF NOT EXISTS instance_recounted
    AFTER UPDATE OF status, instance_type ON instance
    WHEN old.status IS NOT new.status OR old.instance_type IS NOT new.instance_type
    BEGIN
        UPDATE instance_count SET instances = instances - 1
        WHERE status = old.status AND instance_type = old.instance_type AND shard = 0;
        INSERT INTO instance_count (status, instance_type, shard, instances)
        VALUES (new.status, new.instance_type, 0, 1)
        ON CONFLICT (status, instance_type, shard) DO UPDATE SET instances = instances + 1;
    END""", """
    CREATE TRIGGER IF NOT EXISTS instance_uncounted AFTER DELETE ON instance
    BEGIN
        UPDATE instance_count SET instances = instances - 1
        WHERE status = old.status AND instance_type = old.instance_type AND shard = 0;
    END""",
]

# Row triggers, each an upsert of one counter row: for the one-row inserts
# of the API they cost less than statement triggers over transition tables
# (PostgreSQL builds those tables for every statement). Rows of one shard
# are locked in the order of their key within a statement's update
# (old pair, new pair, sorted), so two transactions that share a shard do
# not lock two rows in opposite orders there.
UPSERT = f"""
        INSERT INTO instance_count AS c (status, instance_type, shard, instances)
        VALUES ({{row}}.status, {{row}}.instance_type, mod(pg_backend_pid(), {SHARDS}), {{change}})
        ON CONFLICT (status, instance_type, shard)
        DO UPDATE SET instances = c.instances + excluded.instances;"""
POSTGRES_TRIGGERS = [
    TABLE, f"""
    CREATE OR REPLACE FUNCTION instance_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {UPSERT.format(row="NEW", change="1")}
        RETURN NULL;
    END $$""", """
    CREATE OR REPLACE TRIGGER instance_counted AFTER INSERT ON instance
    FOR EACH ROW EXECUTE FUNCTION instance_counted()""",
    f"""
    CREATE OR REPLACE FUNCTION instance_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {UPSERT.format(row="OLD", change="-1")}
        RETURN NULL;
    END $$""", """
    CREATE OR REPLACE TRIGGER instance_uncounted AFTER DELETE ON instance
    FOR EACH ROW EXECUTE FUNCTION instance_uncounted()""",
    f"""
    CREATE OR REPLACE FUNCTION instance_recounted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        this_shard integer := mod(pg_backend_pid(), {SHARDS});
    BEGIN
        INSERT INTO instance_count AS c (status, instance_type, shard, instances)
        SELECT status, instance_type, this_shard, change FROM (VALUES
            (OLD.status, OLD.instance_type, -1), (NEW.status, NEW.instance_type, 1))
            AS moved (status, instance_type, change)
        ORDER BY status, instance_type
        ON CONFLICT (status, instance_type, shard)
        DO UPDATE SET instances = c.instances + excluded.instances;
        RETURN NULL;
    END $$""", """
    CREATE OR REPLACE TRIGGER instance_recounted AFTER UPDATE OF status, instance_type
    ON instance FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.instance_type IS DISTINCT FROM NEW.instance_type)
    EXECUTE FUNCTION instance_recounted()""",
]


def create():
    """The counter table and its triggers, where missing."""
    for statement in SQLITE_TRIGGERS if is_sqlite() else POSTGRES_TRIGGERS:
        db.execute_sql(statement)


def fill():
    """Set the counters from the instances there are (migration 10), in one
    transaction with the triggers already in place."""
    with db.atomic():
        db.execute_sql("DELETE FROM instance_count")
        db.execute_sql("INSERT INTO instance_count (status, instance_type, shard, instances) "
                       "SELECT status, instance_type, 0, count(*) FROM instance "
                       "GROUP BY status, instance_type")


def counts(by=None, where=None):
    """{value of `by`: instances} (`by` is "status" or "instance_type"), or
    with `by` None the total, over the instances whose fields are among the
    values of `where` ({field: [values]})."""
    conditions, params = [], []
    for field, values in (where or {}).items():
        conditions.append(f"{FIELDS[field]} IN ({', '.join(db.param for _ in values)})")
        params.extend(values)
    sql = (f"SELECT {FIELDS[by]}, sum(instances) FROM instance_count" if by
           else "SELECT coalesce(sum(instances), 0) FROM instance_count")
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if by:
        sql += f" GROUP BY {FIELDS[by]}"
        return {value: int(number) for value, number in db.execute_sql(sql, params)}
    return int(db.execute_sql(sql, params).fetchone()[0])


class InstanceCount(Model):
    """The counter rows, for queries that embed their sum (a list's
    X-Total-Count, routes/lists.py)."""
    status = TextField()
    instance_type = TextField()
    shard = IntegerField()
    instances = BigIntegerField()

    class Meta:
        database = db
        table_name = "instance_count"
        primary_key = CompositeKey("status", "instance_type", "shard")


# Named by its table's name in the statements that embed it, so that a
# query plan says which table a scan reads (tests/test_query_plans.py): a
# scan of the counters reads a few dozen rows, whatever the fleet's size.
COUNTERS = InstanceCount.alias("instance_count")


def total(conditions):
    """SELECT the number of instances that pass `conditions` (on COUNTERS'
    status and instance_type)."""
    query = COUNTERS.select(fn.COALESCE(fn.SUM(COUNTERS.instances), SQL("0")))
    return query.where(*conditions) if conditions else query


# Fields the counters can filter and group by.
COUNTED = frozenset({"status", "instance_type"})
# Column names by field, so that no caller's text reaches the SQL.
FIELDS = {"status": "status", "instance_type": "instance_type"}


def status_counts():
    return counts("status")
