"""Schema versions: bring a database to the version of the tables in
models.py. An empty database is created, an older one migrated step by step,
a newer one refused.

Not here: the tables themselves (models.py) or opening the database
(storage.engines).
"""
import logging

import orjson
from peewee import fn
from playhouse.migrate import SchemaMigrator, migrate

import search
from models import (
    MODELS, Instance, InstanceLog, InstancePlan, SchemaVersion, create_triggers, recount_logs,
)
from storage import db
from storage.engines import is_sqlite, schema_lock
from storage.fields import CanonicalUUIDField, _dumps

log = logging.getLogger("instance_api")

# Files written by the first release have the tables but no schema_version.
FIRST_VERSION = 1
SCHEMA_VERSION = 7


class SchemaTooNew(Exception):
    pass


def _add_plan_tree_and_times(migrator):
    """plans' parent_id, started_at and completed_at"""
    migrate(
        migrator.add_column("instance_plan", "parent_id", InstancePlan.parent),
        migrator.add_column("instance_plan", "started_at", InstancePlan.started_at),
        migrator.add_column("instance_plan", "completed_at", InstancePlan.completed_at),
    )


def _count_logs_per_instance(migrator):
    """each instance's log counter"""
    # One ALTER TABLE ... NOT NULL DEFAULT 0. Without allow_not_null,
    # playhouse would rebuild the table to add NOT NULL afterwards, and
    # dropping the old `instance` table would cascade to every log and plan.
    migrate(migrator.add_column("instance", "log_count", Instance.log_count,
                                allow_not_null=True))
    recount_logs()


def _canonical_json(migrator):
    """JSON objects stored with sorted keys"""
    # Until version 4, JSON text was stored in the order it was sent; reads
    # now pass the stored text on as the response's (representations). jsonb on
    # PostgreSQL keeps no order of its own, and its rows are sorted on output.
    if not is_sqlite():
        return
    db.register_function(_canonical, "canonical_json", 1, deterministic=True)
    for model, column in ((Instance, "configuration"), (Instance, "environment_variables"),
                          (InstanceLog, "details")):
        db.execute_sql(f'UPDATE "{model._meta.table_name}" '
                       f'SET "{column}" = canonical_json("{column}")')


def _canonical(text):
    return _dumps(orjson.loads(text))


def _canonical_uuids(migrator):
    """UUIDs stored as the API writes them"""
    # Until version 6, SQLite held UUIDs as 32 hex digits (CanonicalUUIDField).
    # Keys and the columns that refer to them change in one transaction;
    # the foreign keys are checked at its commit, when all agree again.
    if not is_sqlite():
        return
    db.execute_sql("PRAGMA defer_foreign_keys = ON")
    for model in (Instance, InstanceLog, InstancePlan):
        names = [field.column_name for field in model._meta.sorted_fields
                 if isinstance(getattr(field, "rel_field", field), CanonicalUUIDField)]
        db.execute_sql(f'UPDATE "{model._meta.table_name}" SET '
                       + ", ".join(f'"{name}" = {_dashed(name)}' for name in names))


def _dashed(name):
    """SQL: the column's 32 hex digits as a canonical UUID; NULL or text
    already dashed as it is."""
    column = f'"{name}"'
    dashed = " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length
                                in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))
    return f"CASE WHEN length({column}) = 32 THEN {dashed} ELSE {column} END"


def _labels_and_search(migrator):
    """labels, the label and search indexes"""
    # NOT NULL with the column's DEFAULT '{}' in one ALTER TABLE: every
    # instance has no labels (a table rebuild would cascade, see version 3).
    migrate(migrator.add_column("instance", "labels", Instance.labels, allow_not_null=True))
    search.create_indexes()
    search.fill_indexes()


# MIGRATIONS[n] takes a database at version n - 1 to version n; its
# docstring is what the log says it does. New tables, indexes and triggers
# need no entry: create_tables adds whatever is missing (version 4's sort
# indexes, version 5's log counting trigger).
MIGRATIONS = {2: _add_plan_tree_and_times, 3: _count_logs_per_instance, 4: _canonical_json,
              6: _canonical_uuids, 7: _labels_and_search}


def create_tables():
    """Bring the database to SCHEMA_VERSION: create it when empty, migrate it
    when older, refuse it when a newer server wrote it. A database already at
    SCHEMA_VERSION is only read, so a read-only file can serve.

    Servers that start together take turns (engines.schema_lock) and read
    the version again once it is their turn: the first creates or migrates,
    the others find it done."""
    with db.connection_context():
        version = checked(stored_version())
        if version == SCHEMA_VERSION:
            if not is_sqlite() and not search.has_trigram_index():
                with schema_lock():   # in case the extension was installed since
                    search.create_trigram_index()
            return
        with schema_lock():
            version = checked(stored_version())
            if version == SCHEMA_VERSION:
                return
            migrator = SchemaMigrator.from_database(db.obj)
            for step in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                if step in MIGRATIONS:
                    log.info("Migrating the database to schema version %d: %s", step,
                             MIGRATIONS[step].__doc__)
                    MIGRATIONS[step](migrator)
            db.create_tables(MODELS, safe=True)
            create_triggers()
            search.create_indexes()
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)


def checked(version):
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this server's "
            f"{SCHEMA_VERSION}; run a newer instance-api or another file")
    return version


def stored_version():
    """The schema version of the open file; None for an empty file."""
    tables = set(db.get_tables())
    if Instance._meta.table_name not in tables:
        return None
    if SchemaVersion._meta.table_name not in tables:
        return FIRST_VERSION
    return SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()
