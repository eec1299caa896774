"""What the database itself does as logs are inserted (the triggers on
instance_log), on each engine: the instance's counts and activity, each
log's seq and fleet position, and the notifications that wake live tails.

Not here: the tables (models.py) or the event triggers (feeds.py).
"""
from storage import db
from storage.engines import SQLITE_PLUS_SECONDS, is_sqlite

# What the database does as logs are inserted, in the inserting transaction,
# so that every insert does it (the API, a bulk seed):
# - Instance.log_count rises by the logs added, so that an unfiltered log
#   list's X-Total-Count is one row read instead of counting 100,000 index
#   entries;
# - each log's seq is its instance's next number. Whoever takes a number
#   holds the instance until its transaction ends (SQLite's write lock on
#   the file; the instance's row lock on PostgreSQL), so an instance's logs
#   commit in seq order, and a follower that has read up to seq n can never
#   later find an n - 1 committed behind it (CONTRACT 3.3). created_at could
#   not promise that: it is stamped before the write lock, and two writers
#   may commit in the other order;
# - on PostgreSQL, a NOTIFY with the instance's id on the schema's channel
#   (LOG_CHANNEL) wakes its live tails in every process when the transaction
#   commits (storage.tail); a deleted instance notifies too. SQLite's
#   watcher polls instead.
# - each log's fleet_seq, its place in the fleet's log (feeds.py): on
#   SQLite the next value of the one-row counter, in the same UPDATE as seq;
#   on PostgreSQL column defaults (a sequence and the transaction's id).
# SQLite triggers run per row, so the number is the new log_count. On
# PostgreSQL the count is updated once per statement, over the inserted rows,
# after them; the number is taken per row, before it is written: the first
# log of an instance in a transaction locks the instance's row (the lock the
# count update takes anyway) and reads the highest seq through the unique
# index, which also sees the rows this statement inserted before it; the
# next logs of the same instance in the transaction count on from there
# (remembered in a setting local to the transaction, undone with it), which
# took a batch of 100 logs from 44 to 32 µs a row. Logs are deleted with
# their instance, or by the purge (jobs/purge.py), which lowers log_count in
# its own transaction.
# - the instance's last_activity_at becomes the log's created_at when it
#   is a second or more older (CONTRACT 4.1), and its idle_deadline
#   follows; a log less than a second after the last recorded activity
#   changes neither (on SQLite, most logs of a busy instance are told apart
#   by comparing the text up to the second, without date arithmetic);
# - log_seq (the seq of the newest log ever) rises with the seq, so that a
#   purge, which lowers log_count, never makes a seq repeat.
# The assignments in SQLite's UPDATE all read the row as it was before it.
SQLITE_DUE = ("(substr(last_activity_at, 1, 19) <> substr(NEW.created_at, 1, 19) AND "
              "last_activity_at <= strftime('%Y-%m-%d %H:%M:%f', NEW.created_at, '-1 seconds'))")
SQLITE_ACTIVITY = (
    f"last_activity_at = CASE WHEN {SQLITE_DUE} THEN NEW.created_at ELSE last_activity_at END, "
    f"idle_deadline = CASE WHEN idle_deadline IS NOT NULL AND {SQLITE_DUE} THEN "
    + SQLITE_PLUS_SECONDS.format(moment="NEW.created_at", seconds="idle_timeout_s")
    + " ELSE idle_deadline END")
LOG_CHANNEL = "'instance_log_' || to_hex(hashtextextended({schema}, 0))"
POSTGRES_CHANNEL = LOG_CHANNEL.format(schema="TG_TABLE_SCHEMA")
LOG_TRIGGERS = {
    "sqlite": [f"""
        CREATE TRIGGER IF NOT EXISTS instance_log_counted AFTER INSERT ON instance_log
        BEGIN
            UPDATE instance SET log_count = log_count + 1, log_seq = log_seq + 1,
                {SQLITE_ACTIVITY}
            WHERE id = NEW.instance_id;
            UPDATE feed_counter SET value = value + 1 WHERE id = 1;
            UPDATE instance_log
            SET seq = (SELECT log_seq FROM instance WHERE id = NEW.instance_id),
                fleet_seq = (SELECT value FROM feed_counter WHERE id = 1)
            WHERE rowid = NEW.rowid;
        END"""],
    "postgresql": ["""
        CREATE OR REPLACE FUNCTION instance_log_sequenced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            last text := current_setting('instance_log.last_seq', true);
            given integer;
        BEGIN
            IF split_part(last, ' ', 1) = NEW.instance_id::text THEN
                NEW.seq := split_part(last, ' ', 2)::integer + 1;
            ELSE
                SELECT log_seq INTO given FROM instance WHERE id = NEW.instance_id
                FOR NO KEY UPDATE;
                NEW.seq := greatest(coalesce(given, 0), coalesce(
                    (SELECT max(seq) FROM instance_log WHERE instance_id = NEW.instance_id),
                    0)) + 1;
            END IF;
            PERFORM set_config('instance_log.last_seq', NEW.instance_id::text || ' ' || NEW.seq,
                               true);
            RETURN NEW;
        END $$""", """
        CREATE OR REPLACE TRIGGER instance_log_sequenced BEFORE INSERT ON instance_log
        FOR EACH ROW EXECUTE FUNCTION instance_log_sequenced()""", f"""
        CREATE OR REPLACE FUNCTION instance_log_counted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE instance SET log_count = log_count + added.n,
                log_seq = greatest(log_seq, added.top),
                last_activity_at = CASE WHEN last_activity_at <= added.newest - interval '1 second'
                                   THEN added.newest ELSE last_activity_at END,
                idle_deadline = CASE WHEN last_activity_at <= added.newest - interval '1 second'
                                     AND idle_deadline IS NOT NULL
                                THEN added.newest + idle_timeout_s * interval '1 second'
                                ELSE idle_deadline END
            FROM (SELECT instance_id, count(*) AS n, max(seq) AS top, max(created_at) AS newest
                  FROM new_logs GROUP BY instance_id) AS added
            WHERE instance.id = added.instance_id;
            PERFORM pg_notify({POSTGRES_CHANNEL}, instance_id::text)
            FROM (SELECT DISTINCT instance_id FROM new_logs) AS added;
            RETURN NULL;
        END $$""", """
        CREATE OR REPLACE TRIGGER instance_log_counted AFTER INSERT ON instance_log
        REFERENCING NEW TABLE AS new_logs FOR EACH STATEMENT
        EXECUTE FUNCTION instance_log_counted()""", f"""
        CREATE OR REPLACE FUNCTION instance_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify({POSTGRES_CHANNEL}, id::text) FROM gone;
            RETURN NULL;
        END $$""", """
        CREATE OR REPLACE TRIGGER instance_deleted AFTER DELETE ON instance
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION instance_deleted()"""],
}


def create_triggers():
    for statement in LOG_TRIGGERS["sqlite" if is_sqlite() else "postgresql"]:
        db.execute_sql(statement)
