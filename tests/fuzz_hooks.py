"""Schemathesis hooks for tests/test_fuzz.py (loaded with SCHEMATHESIS_HOOKS).

positive_data_acceptance runs: a request that the OpenAPI document allows
must be accepted. These are the only answers it may give otherwise, the
cases where the request fits the document and the contract still refuses
it, because what decides is the state of the data, which no JSON Schema
can say. Each is recognized by its status and by exactly what the problem
names; any other refusal of a valid request still fails the run.
"""
import schemathesis

POSITIVE_DATA = "positive_data_acceptance"


def only(errors, where, field, words):
    """The problem's `errors` name exactly `where`.`field`, with a message
    holding `words`."""
    return (list(errors) == [where] and list(errors[where]) == [field]
            and any(words in message for message in errors[where][field]))


def unexpressible(case, response):
    status = response.status_code
    # If-Match naming another version than the stored one (2.2): the ETags
    # the fuzzer makes up are well-formed and never current.
    if status == 412:
        return "If-Match" in (case.headers or {})
    if status != 422:
        return False
    try:
        errors = response.json().get("errors") or {}
    except ValueError:
        return False
    return (
        # An Idempotency-Key the run already used with another body (2.2).
        only(errors, "headers", "Idempotency-Key", "Already used")
        # A parent_id naming no plan of this instance (2.4).
        or only(errors, "json", "parent_id", "No plan with id")
        # `after` naming no log of this instance (2.4).
        or only(errors, "query", "after", "No log with id")
        # `sort` with `after`, whose order is fixed (oldest first): two
        # parameters each valid alone, which OpenAPI cannot tie together.
        or only(errors, "query", "sort", "after")
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a refusal the document cannot express."""
    return not (POSITIVE_DATA in getattr(failure, "checks", ())
                and unexpressible(case, response))
