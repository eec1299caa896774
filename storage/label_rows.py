"""PostgreSQL: one row per label of an instance, and the number of instances
of each label and key, kept by a trigger in the transaction of every write
to `instance` (schema version 14). SQLite has had them since version 7
(search.py); these are the same tables, so that the same queries answer
the dashboard's question on either engine:
- a page of one `key=value`, newest first: a range of `instance_label_value`
  (key, value, created_at, instance_id) read in order, each instance then
  found by its id. The GIN index of `labels` finds the instances of a label
  in no order: its planner either sorts them all or walks every instance
  newest first testing each, and every unlabelled instance created since
  was one more to step past (bench/README.md: 25 req/s at the large size);
- its X-Total-Count: the label's counters, summed, instead of counting the
  instances the GIN index finds (tens of thousands at the large size).

The counters are sharded as the instance counters are (storage.counters):
concurrent creates of instances with the same label would otherwise queue
on one row, each holding its lock until it commits. Within a statement the
rows are locked in the order of their key, so that two transactions never
lock two rows of one shard in opposite orders. A counter row at 0 on the
shard that brought it there is deleted (only rows the statement before has
locked: no new wait): labels with ever-new values (a run id) would leave
rows behind.

Not here: the queries that read them (search.py), the instance counters
(storage.counters).
"""
from storage import db
from storage.counters import SHARDS

SHARD = f"mod(pg_backend_pid(), {SHARDS})"

TABLES = [
    """
    CREATE TABLE IF NOT EXISTS instance_label (
        key text NOT NULL, value text NOT NULL, instance_id uuid NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (key, instance_id))""",
    """
    CREATE UNIQUE INDEX IF NOT EXISTS instance_label_value
        ON instance_label (key, value, created_at, instance_id)""",
    """
    CREATE TABLE IF NOT EXISTS instance_label_count (
        key text NOT NULL, value text NOT NULL, shard integer NOT NULL,
        instances bigint NOT NULL,
        PRIMARY KEY (key, value, shard))""",
    """
    CREATE TABLE IF NOT EXISTS instance_label_key_count (
        key text NOT NULL, shard integer NOT NULL, instances bigint NOT NULL,
        PRIMARY KEY (key, shard))""",
]

# One function for the three writes: OLD is NULL on an insert, NEW on a
# delete, and jsonb_each_text(NULL) has no rows. A label that an update
# keeps is counted -1 and +1: its net 0 touches no counter row.
FUNCTION = f"""
    CREATE OR REPLACE FUNCTION instance_labels_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        this_shard integer := {SHARD};
    BEGIN
        IF OLD.labels IS NOT NULL AND OLD.labels <> '{{}}' THEN
            DELETE FROM instance_label WHERE key IN (SELECT jsonb_object_keys(OLD.labels))
                AND instance_id = OLD.id;
        END IF;
        IF NEW.labels IS NOT NULL AND NEW.labels <> '{{}}' THEN
            INSERT INTO instance_label (key, value, instance_id, created_at)
            SELECT key, value, NEW.id, NEW.created_at FROM jsonb_each_text(NEW.labels);
        END IF;
        INSERT INTO instance_label_count AS c (key, value, shard, instances)
        SELECT key, value, this_shard, sum(change) FROM (
            SELECT key, value, -1 AS change FROM jsonb_each_text(OLD.labels)
            UNION ALL
            SELECT key, value, 1 FROM jsonb_each_text(NEW.labels)) AS moved
        GROUP BY key, value HAVING sum(change) <> 0 ORDER BY key, value
        ON CONFLICT (key, value, shard)
        DO UPDATE SET instances = c.instances + excluded.instances;
        INSERT INTO instance_label_key_count AS c (key, shard, instances)
        SELECT key, this_shard, sum(change) FROM (
            SELECT jsonb_object_keys(OLD.labels) AS key, -1 AS change
            UNION ALL
            SELECT jsonb_object_keys(NEW.labels), 1) AS moved
        GROUP BY key HAVING sum(change) <> 0 ORDER BY key
        ON CONFLICT (key, shard)
        DO UPDATE SET instances = c.instances + excluded.instances;
        IF OLD.labels IS NOT NULL AND OLD.labels <> '{{}}' THEN
            DELETE FROM instance_label_count WHERE shard = this_shard AND instances = 0
                AND (key, value) IN (SELECT key, value FROM jsonb_each_text(OLD.labels)
                                     EXCEPT SELECT key, value FROM jsonb_each_text(NEW.labels));
            DELETE FROM instance_label_key_count WHERE shard = this_shard AND instances = 0
                AND key IN (SELECT jsonb_object_keys(OLD.labels)
                            EXCEPT SELECT jsonb_object_keys(NEW.labels));
        END IF;
        RETURN NULL;
    END $$"""

TRIGGERS = [
    FUNCTION,
    # An instance without labels (the API's default) runs no trigger at all.
    """
    CREATE OR REPLACE TRIGGER instance_labels_added AFTER INSERT ON instance
    FOR EACH ROW WHEN (NEW.labels <> '{}') EXECUTE FUNCTION instance_labels_changed()""",
    """
    CREATE OR REPLACE TRIGGER instance_labels_changed AFTER UPDATE OF labels ON instance
    FOR EACH ROW WHEN (OLD.labels IS DISTINCT FROM NEW.labels)
    EXECUTE FUNCTION instance_labels_changed()""",
    """
    CREATE OR REPLACE TRIGGER instance_labels_removed AFTER DELETE ON instance
    FOR EACH ROW WHEN (OLD.labels <> '{}') EXECUTE FUNCTION instance_labels_changed()""",
]


def create():
    """The tables and the trigger, where missing (PostgreSQL)."""
    for statement in TABLES + TRIGGERS:
        db.execute_sql(statement)


def fill():
    """Set the rows and counters from the instances there are (migration 14),
    in the caller's transaction, with the trigger already in place."""
    for table in ("instance_label", "instance_label_count", "instance_label_key_count"):
        db.execute_sql(f"DELETE FROM {table}")
    db.execute_sql("INSERT INTO instance_label (key, value, instance_id, created_at) "
                   "SELECT each.key, each.value, instance.id, instance.created_at "
                   "FROM instance, jsonb_each_text(instance.labels) AS each")
    db.execute_sql("INSERT INTO instance_label_count (key, value, shard, instances) "
                   "SELECT key, value, 0, count(*) FROM instance_label GROUP BY key, value")
    db.execute_sql("INSERT INTO instance_label_key_count (key, shard, instances) "
                   "SELECT key, 0, count(*) FROM instance_label GROUP BY key")
