"""Schemathesis hooks for tests/test_fuzz.py (loaded with SCHEMATHESIS_HOOKS).

before_load_schema: the fields that hold any JSON (configuration, details)
are plain `type: object` in the document, their rules said in words
(routes/docs.JSON_RULES), because client generators cannot resolve the
recursive schema that says them; the fuzzer gets that schema here, so that
valid data it makes keeps the rules and invalid data breaks them.

filter_failure: positive_data_acceptance runs: a request that the OpenAPI
document allows must be accepted. These are the only answers it may give
otherwise, the cases where the request fits the document and the contract
still refuses it, because what decides is the state of the data or a tie
between two parameters, which OpenAPI cannot say. Each is recognized by its status and
by exactly what the problem names; any other refusal of a valid request
still fails the run.
"""
import math

import schemathesis

from routes.docs import JSON_RULES
from schema_fields import NUL_FREE

POSITIVE_DATA = "positive_data_acceptance"

REF = {"$ref": "#/components/schemas/JSONValue"}
# routes/docs.JSON_RULES as JSON Schema: no NUL in a key or a string, and
# integers within 64 bits; any other number. The depth limit (64 levels)
# has no JSON Schema keyword; generated values stay far below it.
JSON_VALUE = {"anyOf": [
    {"type": ["null", "boolean"]},
    {"type": "integer", "minimum": -2**63, "maximum": 2**64 - 1},
    {"type": "number", "not": {"type": "integer"}},
    {"type": "string", "pattern": NUL_FREE},
    {"type": "array", "items": REF},
    {"type": "object", "propertyNames": {"pattern": NUL_FREE}, "additionalProperties": REF},
]}


def any_json(schema):
    """Whether `schema` is an object of any JSON values that states the rule
    in its description: how the document writes configuration and details."""
    return (schema.get("type") == "object" and schema.get("additionalProperties") == {}
            and JSON_RULES in schema.get("description", ""))


def with_json_values(document):
    """Points every object of any JSON values in `document` at JSONValue,
    added to its components. Returns the (schema, property) names changed."""
    changed = []
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            if any_json(prop):
                prop["additionalProperties"] = REF
                changed.append((name, field))
    schemas["JSONValue"] = JSON_VALUE
    return changed


@schemathesis.hook
def before_load_schema(context, raw_schema):
    with_json_values(raw_schema)


# (where, field, words of the message): the refusals of a valid request that
# the state of the data or a tie between parameters decides.
UNEXPRESSIBLE = (
    # An Idempotency-Key the run already used with another body (2.2).
    ("headers", "Idempotency-Key", "Already used"),
    # A parent_id naming no plan of this instance (2.4).
    ("json", "parent_id", "No plan with id"),
    # `after` naming no log of this instance (2.4).
    ("query", "after", "No log with id"),
    # `sort` with `after`, whose order is fixed (commit order): two
    # parameters each valid alone, which OpenAPI cannot tie together.
    ("query", "sort", "after"),
    # `sort=name,-name`: distinct items (uniqueItems holds) naming one
    # field twice, which JSON Schema cannot say of an enum's members.
    ("query", "sort", "appears more than once"),
    # Likewise `wait` (3.3): only with `after`, and not with limit=0.
    ("query", "wait", "after="),
    ("query", "wait", "limit=0"),
)


def unexpressible(case, response):
    status = response.status_code
    # If-Match naming another version than the stored one (2.2): the ETags
    # the fuzzer makes up are well-formed and never current.
    if status == 412:
        return "If-Match" in (case.headers or {})
    # A fleet feed's `after` naming a log or event that is not kept (4.7):
    # a well-formed id the data decides on.
    if status == 410:
        return "after" in (getattr(case, "query", None) or {})
    if status != 422:
        return False
    try:
        errors = response.json().get("errors") or {}
    except ValueError:
        return False
    # Every message of every field named is one of those; any other refusal
    # beside them still fails.
    named = [(where, field, message) for where, fields in errors.items()
             for field, messages in fields.items() for message in messages]
    return bool(named) and all(
        any(where == w and field == f and words in message for w, f, words in UNEXPRESSIBLE)
        for where, field, message in named)


NEGATIVE_DATA = "negative_data_rejection"


def holds_rule(value, depth=2):
    """routes/docs.JSON_RULES as the server applies them to a parsed value
    (a field of the body is at depth 2). Unlike JSON_VALUE, a float written
    with an exponent (1e300) is a float here, as it is to the server: JSON
    Schema calls every whole number an integer."""
    if isinstance(value, str):
        return "\x00" not in value
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -2**63 <= value <= 2**64 - 1
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return depth < 64 and all(holds_rule(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth < 64 and all("\x00" not in key and holds_rule(item, depth + 1)
                                  for key, item in value.items())
    return False


def mistaken_negation(failure, case):
    """The fuzzer breaks a value of configuration or details by negating one
    branch of JSONValue's anyOf, and may make one that the server accepts (a
    whole float like -1.8e287 where it broke the object branch: JSON Schema
    has no type for it, the server reads a float): it then calls the answer
    to a valid body a failure. Recognized only when every such field of
    the body does hold the rule; any other body still fails."""
    body = case.body if isinstance(case.body, dict) else None
    fields = [body[name] for name in ("configuration", "details") if body and name in body]
    return ("/anyOf/" in (failure.message or "") and bool(fields)
            and all(holds_rule(value) for value in fields))


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a refusal the document cannot express, and the
    fuzzer's own mistake about a valid body (mistaken_negation)."""
    checks = getattr(failure, "checks", ())
    if NEGATIVE_DATA in checks and mistaken_negation(failure, case):
        return False
    return not (POSITIVE_DATA in checks and unexpressible(case, response))
