"""Column types, stored the way each engine reads fastest and written back
as the API writes them: UTC timestamps, JSON objects, canonical UUIDs.

Not here: the tables (models.py)."""
import re
import uuid
from datetime import datetime, timezone

import orjson
from peewee import DateTimeField, JSONField, Node, UUIDField

from storage import db
from storage.engines import is_sqlite


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTimeField(DateTimeField):
    """Aware UTC datetimes: TIMESTAMPTZ on PostgreSQL; fixed-width naive UTC
    text on SQLite.

    Fixed width keeps text order equal to time order, so indexes sort by time;
    fromisoformat is much cheaper than peewee's format guessing on every row.
    """

    def db_value(self, value):
        if isinstance(value, datetime):
            value = (value.astimezone(timezone.utc) if value.tzinfo is not None
                     else value.replace(tzinfo=timezone.utc))
            if db.text_timestamps:
                return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def python_value(self, value):
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        if isinstance(value, datetime):
            return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None
                    else value.astimezone(timezone.utc))
        return value


def _dumps(value):
    # Keys sorted at every depth: the text is then the JSON the API writes
    # (schemas.JSONObject), and a read on SQLite passes it on as it is.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class ObjectField(JSONField):
    """A JSON object column (TEXT on SQLite, JSONB on PostgreSQL)."""

    def __init__(self, **kwargs):
        super().__init__(dumps=_dumps, loads=orjson.loads, default=dict, **kwargs)

    def db_value(self, value):
        # On SQLite, peewee would bind json(<text>), which parses orjson's
        # text again only to store the same text, and is an SQL expression
        # rather than a value a compiled INSERT can bind (reads.run).
        if value is not None and not isinstance(value, Node) and is_sqlite():
            return self._dumps(value)
        return super().db_value(value)


class CanonicalUUIDField(UUIDField):
    """A UUID column: native on PostgreSQL; on SQLite the canonical text the
    API writes (36 characters, lower case) rather than peewee's 32 hex
    digits, so a read passes it on as stored. Reshaping the hex in SQL took
    five substr() and eight concatenations per value: 130 of the 200 µs of
    the statement behind a page of 50 instances (schema version 6).
    UUIDv7 text sorts the same with or without the dashes."""

    def db_value(self, value):
        if value is None or isinstance(value, Node) or not is_sqlite():
            return super().db_value(value)
        if type(value) is str and CANONICAL_UUID.fullmatch(value):
            return value   # new_id's text, or a UUID the API already wrote
        try:
            return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))
        except (TypeError, ValueError, AttributeError):
            return value   # as peewee: a value that is no UUID matches no row


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def rfc3339(moment):
    """An aware datetime as the API writes it: UTC, microseconds, +00:00."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
