"""Schemathesis hooks for tests/test_fuzz.py (loaded with SCHEMATHESIS_HOOKS).

positive_data_acceptance runs: a request that the OpenAPI document allows
must be accepted. These are the only answers it may give otherwise, the
cases where the request fits the document and the contract still refuses
it, because what decides is the state of the data or a tie between two
parameters, which OpenAPI cannot say. Each is recognized by its status and
by exactly what the problem names; any other refusal of a valid request
still fails the run.
"""
import schemathesis

POSITIVE_DATA = "positive_data_acceptance"

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


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a refusal the document cannot express."""
    return not (POSITIVE_DATA in getattr(failure, "checks", ())
                and unexpressible(case, response))
