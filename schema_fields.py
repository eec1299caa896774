"""The field types the schemas (schemas.py) are built from: patterns that
match whole values, whole numbers, query integers, JSON objects written with
sorted keys, timestamps, enums, slugs and sort orders.

Each field holds one input rule and what the API docs say of it; the
schemas say which field has which type.
"""
import re
from datetime import timezone

import orjson
from marshmallow import ValidationError, fields, validate
from webargs.fields import DelimitedList

from storage.fields import rfc3339

SLUG = r"^[a-z][a-z0-9_.-]{0,63}$"
# The service stores no NUL character: a body with one is refused
# (routes/common.check_storable), and so is a query (StrictParser).
NUL_FREE = r"^[^\u0000]*$"
# ... and holds a character other than white space (\s as Python's str.isspace).
NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def not_blank(value):
    if not value.strip():
        raise ValidationError("Must contain a non-whitespace character.")


class Pattern(validate.Regexp):
    """Regexp that must match the whole value. Python's `$` also matches
    before a final newline, so "system\\n" would pass a plain Regexp; the
    pattern itself stays in the portable ^...$ form the API docs publish."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class WholeNumber(fields.Integer):
    """An integer, also when written as an integral number such as 3458.0
    (JSON Schema's `integer` is any number without a fraction, and a
    client's JSON library may write one so). A fraction or a boolean is
    refused (CONTRACT 1.6); the value is stored as the int."""

    def _validated(self, value):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class QueryInteger(fields.Integer):
    """A query integer: ASCII digits (after an optional minus, so that a
    negative number is refused for its range), nothing else. int() would
    also take " 10", "10\\n", "+10", "1_0" and other scripts' digits."""

    DIGITS = re.compile(r"-?[0-9]+")

    def _validated(self, value):
        if not isinstance(value, str) or not self.DIGITS.fullmatch(value):
            raise self.make_error("invalid")
        return super()._validated(value)


def sorted_keys(value):
    """`value` with the keys of every object in it sorted."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


class JSONObject(fields.Dict):
    """A JSON object, written out with its keys sorted at every depth.

    PostgreSQL's jsonb does not keep key order, so without this a resource
    read back would differ from the one just written (and so would its
    ETag), and the two engines would answer differently. Inputs nest at most
    64 levels (routes/common.py), well within recursion limits. The keys of
    a JSON object are strings already; a `keys` field is only for rules of
    its own (environment variable names).

    The API docs show one without `values` as a plain `type: object` whose
    description says what the service refuses anywhere inside it
    (routes/docs.json_rules), not as a recursive schema: client generators
    cannot resolve one (tests/fuzz_hooks.py gives it to the fuzzer)."""

    def __init__(self, **kwargs):
        metadata = {"propertyNames": {"pattern": NUL_FREE}, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        # What is written out was stored, so was checked on the way in:
        # Dict's per-key serialization would only cost time. A Fragment is
        # stored text that is already sorted (storage.reads.representations).
        if value is None or isinstance(value, orjson.Fragment):
            return value
        return sorted_keys(value)


class Moment(fields.DateTime):
    """A timestamp written as RFC 3339 in UTC with microseconds, from a
    datetime or from the text the storage layer already made of one
    (storage.reads.representations), so both write the same bytes."""

    def _serialize(self, value, attr, obj, **kwargs):
        return value if value is None or isinstance(value, str) else rfc3339(value)


def Text(blank=True, **kwargs):
    """A string; the API docs say that it holds no NUL character and, unless
    it may be `blank`, a character other than white space (not_blank)."""
    pattern = NUL_FREE if blank else NOT_BLANK
    return fields.String(metadata={"pattern": pattern, **kwargs.pop("metadata", {})},
                         **kwargs)


def Slug(**kwargs):
    return fields.String(
        validate=Pattern(SLUG, error="Must be a lower-case slug matching {regex}."), **kwargs)


def Enum(choices, **kwargs):
    return fields.String(validate=validate.OneOf(choices), **kwargs)


class EnumList(DelimitedList):
    """A query filter taking one value of `choices` or a comma list of them.
    Loads without repeats (`running,running` is `running`): how many values
    a list has is part of its query's shape (routes/lists.py), and repeats
    would make a new shape of each length for the same question."""

    def __init__(self, choices):
        super().__init__(Enum(choices), validate=validate.Length(min=1))

    def _deserialize(self, value, attr, data, **kwargs):
        return list(dict.fromkeys(super()._deserialize(value, attr, data, **kwargs)))


class Timestamp(fields.AwareDateTime):
    """An RFC 3339 query timestamp with a zone, brought to UTC. The API docs
    say which RFC 3339 timestamps it still refuses: Python's datetime has
    no leap second and no year outside 1..9999 (in UTC, once brought there),
    and marshmallow reads an upper-case T and Z only."""

    DESCRIPTION = ("An RFC 3339 timestamp with a zone, e.g. 2026-11-28T22:10:25Z or "
                   "2026-11-28T23:10:25%2B01:00 (a + in a URL is sent as %2B). Refused: a "
                   "moment outside the years 1 to 9999 in UTC (0001-01-01T00:30:00+01:00), "
                   "a leap second (:60), a lower-case t or z.")
    default_error_messages = {
        "invalid": "Not a valid RFC 3339 timestamp; use e.g. 2026-11-28T22:10:25Z "
                   "(a '+' in an offset must be sent as %2B in a URL).",
        "invalid_awareness": "The timestamp needs a zone: Z or an offset like +02:00.",
    }

    def __init__(self, **kwargs):
        super().__init__(metadata={"description": self.DESCRIPTION,
                                   **kwargs.pop("metadata", {})}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise self.make_error("invalid") from None


class Deadline(Timestamp):
    """A timestamp in a body: RFC 3339 with a zone on the way in (as the
    query's), written out as every stored timestamp is (Moment)."""

    _serialize = Moment._serialize


class Seconds(fields.Float):
    """A number of seconds written as a JSON number (25, 0.5, 2.5e1): no
    underscores, spaces, signs before a dot or infinities, which float()
    would take."""

    NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
    default_error_messages = {"invalid": "Not a number of seconds; send e.g. 25 or 0.5."}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not self.NUMBER.fullmatch(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Sort(DelimitedList):
    """`sort=a,-b`: fields from `names`, each ascending or, with a leading
    `-`, descending, each at most once (a second mention could never change
    the order, and every sort is a query shape kept compiled). Loads as a
    list of (name, descending) pairs."""

    def __init__(self, names):
        self.names = names
        keys = [key for name in names for key in (name, f"-{name}")]
        super().__init__(
            fields.String(metadata={"enum": keys}), validate=validate.Length(1, len(names)),
            metadata={"uniqueItems": True,
                      "description": "A comma list of fields to sort by, each at most once, "
                                     "with a leading - for descending order."})

    def _deserialize(self, value, attr, data, **kwargs):
        keys = []
        for item in super()._deserialize(value, attr, data, **kwargs):
            name = item.removeprefix("-")
            if name not in self.names:
                raise ValidationError(
                    f"Cannot sort by {item!r}; use {', '.join(self.names)}, "
                    "each with a leading - for descending order.")
            if any(name == seen for seen, _ in keys):
                raise ValidationError(f"{name!r} appears more than once; sort by each "
                                      "field at most once.")
            keys.append((name, item.startswith("-")))
        return keys
