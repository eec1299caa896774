"""Contract fuzzing: schemathesis reads GET /api/openapi.json from the real
server, generates requests that fit the document and requests that break it
(examples, boundary coverage, random fuzzing, and stateful chains that follow
the Location of what was created), and checks every answer against the same
document: no 5xx, only documented statuses, content types, headers and
bodies, invalid input refused, and valid input accepted
(positive_data_acceptance): the document says what the server accepts.

The fields that hold any JSON (configuration, details) are plain objects
in the document, their rules in words, so that client generators read it;
the hook in tests/fuzz_hooks.py gives the fuzzer those rules as a schema.

The only refusals of valid input let through are those no JSON Schema can
express, each named in tests/fuzz_hooks.py: a stale If-Match, a reused
Idempotency-Key, a parent_id or `after` naming no row, `sort` or `wait`
without the `after` they depend on (or `wait` with limit=0).

Bounded and repeatable: deterministic generation (a fixed seed), a set
number of examples per operation, one worker, no example database.
"""
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from openapi_schema_validator import OAS31Validator

from conftest import ROOT, SITE, USER, clean_environment

EXAMPLES = 100
HOOKS = ROOT / "tests" / "fuzz_hooks.py"


def test_schemathesis_finds_no_failure(start_server, tmp_path):
    # No request waits (INSTANCES_MAX_WAITS=0): a fleet feed's cursor can be
    # valid from the start (after=p0), and a held request outlasts the
    # fuzzer's timeout. Waiting is tested in test_tail*.py, test_fleet*.py.
    # Nor is any webhook the fuzzer makes delivered (the first delivery pass
    # is a day away): no name is resolved, no packet leaves 127.0.0.0/8.
    server = start_server(env={"INSTANCES_MAX_WAITS": "0",
                               "INSTANCES_WEBHOOK_POLL_INTERVAL": "86400"})
    result = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run",
         f"{server.url}/api/openapi.json", "--checks", "all",
         "--max-examples", str(EXAMPLES), "--generation-deterministic", "--workers", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**clean_environment(), "SCHEMATHESIS_HOOKS": str(HOOKS)})
    assert result.returncode == 0, result.stdout[-10_000:] + result.stderr[-2_000:]
    assert re.search(r"Operations: +(\d+) selected / \1 total", result.stdout), result.stdout


sys.path.insert(0, str(HOOKS.parent))
import fuzz_hooks  # noqa: E402


# -- the rule of the objects of any JSON, as the fuzzer sees it ----------------------

def test_the_hook_gives_every_object_of_any_json_its_rule(client):
    document = client.get("/api/openapi.json").get_json()
    assert "JSONValue" not in document["components"]["schemas"]
    assert sorted(fuzz_hooks.with_json_values(document)) == [
        ("Instance", "configuration"), ("InstanceCreate", "configuration"),
        ("InstanceUpdate", "configuration"), ("Log", "details"), ("LogCreate", "details")]
    assert document["components"]["schemas"]["JSONValue"] == fuzz_hooks.JSON_VALUE


@pytest.mark.parametrize("value", [
    None, True, 0, -2**63, 2**64 - 1, 1.5, -2.5e-3, "", "text", [], {},
    [None, [1, {"b": "c"}]], {"nested": {"list": ["x", {"y": 2**63}]}},
    "a\x00b", {"key\x00": 1}, [["\x00"]], {"a": {"b": "\x00"}},
    2**64, -2**63 - 1, {"deep": [2**70]},
])
def test_the_hooks_rule_accepts_what_the_service_accepts(client, value):
    """The schema the fuzzer gets and the service agree, value by value
    (nesting past 64 levels aside, which no JSON Schema keyword states)."""
    schema = {"$ref": "#/components/schemas/JSONValue",
              "components": {"schemas": {"JSONValue": fuzz_hooks.JSON_VALUE}}}
    allowed = OAS31Validator(schema).is_valid(value)
    # The standard library writes integers past 64 bits (the app's orjson does not).
    body = json.dumps({"site_id": SITE, "user_id": USER, "name": "box",
                       "configuration": {"v": value}})
    answer = client.post("/api/instances", data=body, content_type="application/json")
    assert answer.status_code == (201 if allowed else 422), answer.get_json()


# -- the exclusions are exactly those -----------------------------------------------


class Answer:
    def __init__(self, status, errors=None):
        self.status_code, self.errors = status, errors

    def json(self):
        return {"status": self.status_code, "errors": self.errors}


def refused(errors):
    return Answer(422, errors)


@pytest.mark.parametrize("headers, answer", [
    ({"If-Match": '"stale"'}, Answer(412)),
    ({"query": {"after": "01a2506f-e042-7f0b-8175-dbb27dd1dcd0"}}, Answer(410)),
    ({}, refused({"headers": {"Idempotency-Key": ["Already used in the last 24 hours ..."]}})),
    ({}, refused({"json": {"parent_id": ["No plan with id 0188... on this instance."]}})),
    ({}, refused({"query": {"after": ["No log with id 0188... in this list."]}})),
    ({}, refused({"query": {"sort": ["A list with after is oldest first; leave out sort."]}})),
    ({}, refused({"query": {"wait": ["wait needs after=<the id of the last log you have>."]}})),
    ({}, refused({"query": {"wait": ["A page of limit=0 never has a log to wait for; ..."]}})),
    ({}, refused({"query": {"sort": ["A list with after ..."], "wait": ["... limit=0 ..."]}})),
])
def test_the_hooks_let_through_what_the_document_cannot_express(headers, answer):
    query = headers.pop("query", None)
    assert fuzz_hooks.unexpressible(SimpleNamespace(headers=headers, query=query), answer)


@pytest.mark.parametrize("headers, answer", [
    ({}, Answer(412)),
    ({}, Answer(410)),
    ({"If-Match": '"x"'}, Answer(400)),
    ({}, refused({"json": {"name": ["Must contain a non-whitespace character."]}})),
    ({}, refused({"json": {"parent_id": ["Not a valid UUID."]}})),
    ({}, refused({"json": {"parent_id": ["No plan with id x."], "name": ["Bad."]}})),
    ({}, refused({"query": {"sort": ["A list with after ..."], "limit": ["Not a valid ..."]}})),
    ({}, refused({})),
    ({}, refused({"query": {"after": ["Not a valid UUID."]}})),
    ({}, refused({"query": {"limit": ["Not a valid integer."]}})),
    ({}, refused({"query": {"wait": ["Not a number of seconds; send e.g. 25 or 0.5."]}})),
    ({}, refused({"headers": {"Idempotency-Key": ["Must be 1 to 255 visible ASCII ..."]}})),
    ({"If-Match": '"x"'}, refused({"json": {"labels": {"Bad": {"key": ["..."]}}}})),
])
def test_the_hooks_keep_every_other_refusal_of_valid_data(headers, answer):
    assert not fuzz_hooks.unexpressible(SimpleNamespace(headers=headers), answer)


@pytest.mark.parametrize("configuration, mistaken", [
    ({"k": -1.8377211013533202e+287, "n": 0.005}, True),    # whole floats: the server's floats
    ({"k": {"deep": [1, None, "x"]}}, True),
    ({"k": "a\x00b"}, False),                                # a NUL: the server refuses it
    ({"k": 2**64}, False),                                   # past 64 bits
])
def test_a_negation_the_server_rightly_accepts_is_the_fuzzers_mistake(configuration, mistaken):
    failure = SimpleNamespace(message="violates `type` at /properties/configuration/"
                                      "additionalProperties/anyOf/5 (was object, became number)")
    case = SimpleNamespace(body={"name": "box", "configuration": configuration})
    assert fuzz_hooks.mistaken_negation(failure, case) is mistaken
    other = SimpleNamespace(message="violates `maxLength` at /properties/name")
    assert fuzz_hooks.mistaken_negation(other, case) is False
