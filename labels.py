"""Labels (CONTRACT 3.1): the rules of an instance's `labels` and the
grammar of the `label` list filter, as marshmallow fields.

    ?label=env=prod,team,!canary,tier!=gold

Not here: how the selectors are answered (search.py) or the rest of the
instance's fields (schemas.py).
"""
import re
from typing import NamedTuple

from marshmallow import ValidationError, fields

from schema_fields import JSONObject

# 1..63 characters; first and last a letter or digit (a single character is both).
KEY = r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$"
VALUE = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
MAX_LABELS = 32
KEY_RULE = "1 to 63 of a-z 0-9 . _ - /, starting and ending with a letter or digit"
VALUE_RULE = ("0 to 63 of A-Z a-z 0-9 . _ -, starting and ending with a letter or digit "
              "when not empty")
MAX_SELECTORS = 32

# The four selector forms, as `Selector.op`.
EQUALS, DIFFERS, HAS, LACKS = "=", "!=", "has", "lacks"
POSITIVE = (EQUALS, HAS)

_KEY, _VALUE = re.compile(KEY), re.compile(VALUE)


def is_key(text):
    # fullmatch: `$` alone would also match before a final newline.
    return _KEY.fullmatch(text) is not None


def is_value(text):
    return _VALUE.fullmatch(text) is not None


class Selector(NamedTuple):
    op: str
    key: str
    value: str | None = None


def check_key(text):
    if not is_key(text):
        raise ValidationError(f"A label key is {KEY_RULE}.")


def check_value(text):
    if not is_value(text):
        raise ValidationError(f"A label value is {VALUE_RULE}.")


def check_count(labels):
    if len(labels) > MAX_LABELS:
        raise ValidationError(
            f"At most {MAX_LABELS} labels; this object has {len(labels)}.")


class Labels(JSONObject):
    """An instance's labels: string keys to string values, each by its rule.
    Errors are keyed by the label, as marshmallow keys a Dict's:
    {"labels": {"Bad Key": {"key": [...]}, "env": {"value": [...]}}}."""

    def __init__(self, **kwargs):
        super().__init__(
            keys=fields.String(validate=check_key, metadata={"pattern": KEY}),
            values=fields.String(validate=check_value, metadata={"pattern": VALUE}),
            validate=check_count,
            metadata={"maxProperties": MAX_LABELS,
                      "description": f"Up to {MAX_LABELS} labels. Keys: {KEY_RULE}; "
                                     f"values: {VALUE_RULE}."},
            **kwargs)


def parse_selectors(text):
    """The selectors of a `label` filter, or ValidationError naming each
    malformed one: {"env==prod": ["..."], "": ["..."]}."""
    selectors, errors = [], {}
    items = text.split(",")
    if len(items) > MAX_SELECTORS:
        raise ValidationError(f"At most {MAX_SELECTORS} selectors; this filter has "
                              f"{len(items)}.")
    for item in items:
        try:
            selectors.append(parse_selector(item))
        except ValidationError as error:
            errors.setdefault(item, []).extend(error.messages)
    if errors:
        raise ValidationError(errors)
    return selectors


FORMS = "key=value, key!=value, key or !key"


def parse_selector(item):
    if not item:
        raise ValidationError(f"An empty selector; give {FORMS} between the commas.")
    if item.startswith("!"):
        return Selector(LACKS, _selector_key(item[1:], item))
    key, equals, value = item.partition("=")
    if not equals:
        return Selector(HAS, _selector_key(key, item))
    op = EQUALS
    if key.endswith("!"):
        key, op = key[:-1], DIFFERS
    if value.startswith("=") or "=" in value:
        raise ValidationError(f"Not a selector: use one '=' ({FORMS}); '==' and set "
                              "operators are not supported.")
    if not is_value(value):
        raise ValidationError(f"The value is not a label value ({VALUE_RULE}).")
    return Selector(op, _selector_key(key, item), value)


def _selector_key(key, item):
    if not is_key(key):
        raise ValidationError(f"Not a selector: {FORMS}, where a key is {KEY_RULE}.")
    return key


# The grammar of the filter as a pattern, for the API docs: what the parser
# accepts, so a client (or a fuzzer) can tell a valid filter from the text.
_BARE_KEY, _BARE_VALUE = KEY[1:-1], VALUE[1:-1]
SELECTOR = f"(!?{_BARE_KEY}|{_BARE_KEY}!?={_BARE_VALUE})"
SELECTORS = f"^{SELECTOR}(,{SELECTOR}){{0,{MAX_SELECTORS - 1}}}$"


class LabelSelectors(fields.String):
    """The `label` list filter: a comma list of selectors, all of which must
    hold. Loads as a tuple of Selectors, sorted and without repeats, so that
    the same selectors in any order make the same query shape."""

    def __init__(self, **kwargs):
        super().__init__(metadata={
            "pattern": SELECTORS,
            "description": f"Label selectors, all of which must hold: {FORMS} (at most "
                           f"{MAX_SELECTORS}), e.g. `env=prod,team,!canary`."}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        selectors = parse_selectors(super()._deserialize(value, attr, data, **kwargs))
        return tuple(sorted(set(selectors), key=lambda s: (s.op, s.key, s.value or "")))
