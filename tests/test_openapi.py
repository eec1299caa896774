"""The API's description of itself: GET /api/openapi.json, the committed
openapi.json, and the Swagger UI page at /api/docs."""
import json
import re

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from conftest import ROOT, assert_problem
from routes.common import MAX_DEPTH

# Routes that serve the description itself rather than the API, and the
# dashboard's pages and files (/, /ui/...): pages for browsers, not API, kept
# out of the document on purpose (3.4).
SELF_DESCRIBING = re.compile(r"^/api/(openapi\.json|docs)")
NOT_API = re.compile(r"^/(ui/.*|metrics)?$")


@pytest.fixture
def document(client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    return resp.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_committed_openapi_json_is_what_the_code_generates(document):
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == document, "openapi.json is stale: run `make openapi` and commit it"


def test_every_route_and_method_is_documented(app, document):
    for rule in app.url_map.iter_rules():
        if SELF_DESCRIBING.match(rule.rule) or NOT_API.match(rule.rule):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in document["paths"], path
        documented = {method.upper() for method in document["paths"][path]
                      if method != "parameters"}
        assert documented == rule.methods - {"HEAD", "OPTIONS"}, path


def test_every_operation_has_a_unique_operation_id_for_generated_clients(document):
    ids = [operation["operationId"] for operations in document["paths"].values()
           for method, operation in operations.items() if method != "parameters"]
    assert len(ids) == len(set(ids)) == 27
    assert {"getInstances", "postInstances", "patchInstanceById", "postInstanceLogs",
            "deleteInstancePlanById", "getHealth", "getInstanceCounts", "getFleetLogs",
            "getEvents", "postWebhooks", "postWebhookSecret"} <= set(ids)


INSTANCE = "/api/instances/{instance_id}"
PLAN = "/api/instances/{instance_id}/plans/{plan_id}"
LOGS = "/api/instances/{instance_id}/logs"


@pytest.mark.parametrize("path, method, statuses", [
    ("/api/instances", "get", {200, 401, 422, 500}),
    ("/api/instances/counts", "get", {200, 304, 401, 422, 500}),
    ("/api/instances", "post", {201, 400, 401, 413, 415, 422, 500, 503}),
    (INSTANCE, "get", {200, 304, 401, 404, 500}),
    (INSTANCE, "patch", {200, 400, 401, 404, 412, 413, 415, 422, 500, 503}),
    (INSTANCE, "delete", {204, 401, 404, 412, 500, 503}),
    (LOGS, "get", {200, 401, 404, 410, 422, 500}),
    (LOGS, "post", {201, 400, 401, 404, 413, 415, 422, 500, 503}),
    (LOGS + "/{log_id}", "get", {200, 304, 401, 404, 500}),
    (PLAN, "put", {200, 400, 401, 404, 412, 413, 415, 422, 500, 503}),
    (INSTANCE + "/heartbeat", "post", {204, 400, 401, 404, 409, 413, 415, 422, 500, 503}),
    ("/healthz", "get", {200, 304, 500, 503}),
])
def test_each_operation_lists_every_status_it_can_answer(document, path, method, statuses):
    assert set(map(int, document["paths"][path][method]["responses"])) == statuses


def resolve(document, node):
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = document["components"][kind][name]
    return node


def test_every_error_is_documented_as_problem_json(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":  # shared by the path's operations
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = resolve(document, response)["content"]
                    assert list(content) == ["application/problem+json"], (path, method)


@pytest.mark.parametrize("path, method, status, headers", [
    ("/api/instances", "get", "200", {"X-Total-Count", "Link", "X-Request-ID"}),
    ("/api/instances", "post", "201", {"Location", "ETag", "Idempotent-Replayed",
                                       "X-Request-ID"}),
    (INSTANCE, "get", "200", {"ETag", "X-Request-ID"}),
    (INSTANCE, "get", "304", {"ETag", "X-Request-ID"}),
    (PLAN, "patch", "200", {"ETag", "X-Request-ID"}),
])
def test_response_headers_are_documented(document, path, method, status, headers):
    response = resolve(document, document["paths"][path][method]["responses"][status])
    assert set(response["headers"]) == headers


@pytest.mark.parametrize("path, method, names", [
    ("/api/instances", "post", {"Idempotency-Key", "X-Request-ID"}),
    (INSTANCE, "get", {"If-None-Match", "X-Request-ID"}),
    (INSTANCE, "put", {"If-Match", "X-Request-ID"}),
    (PLAN, "delete", {"If-Match", "X-Request-ID"}),
])
def test_request_headers_are_documented(document, path, method, names):
    parameters = [resolve(document, p) for p in document["paths"][path][method]["parameters"]]
    assert {p["name"] for p in parameters if p["in"] == "header"} == names


def test_query_parameters_carry_their_limits_and_enums(document):
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/api/instances"]["get"][
        "parameters"] if "name" in p}
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (0, 1000)
    assert parameters["status"]["items"]["enum"][0] == "pending"
    assert "-name" in parameters["sort"]["items"]["enum"]
    assert parameters["q"]["maxLength"] == 255


def test_the_counts_take_the_list_filters_and_by_but_no_paging(document):
    operation = document["paths"]["/api/instances/counts"]["get"]
    names = {p["name"] for p in operation["parameters"] if "name" in p}
    listing = {p["name"] for p in document["paths"]["/api/instances"]["get"]["parameters"]
               if "name" in p}
    assert names == listing - {"limit", "offset", "sort"} | {"by"}
    assert operation["summary"].startswith("Count the instances")
    schema = resolve(document, operation["responses"]["200"]["content"]["application/json"][
        "schema"])
    assert set(schema["properties"]) == {"total", "by"}


def matches(pattern, text):
    # The document's patterns are ECMA regexes that Python reads the same way.
    return re.search(pattern, text) is not None


def test_object_keys_and_label_rules_are_stated_as_json_schema(document):
    instance = document["components"]["schemas"]["Instance"]["properties"]
    env = instance["environment_variables"]
    assert env["propertyNames"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    labels = instance["labels"]
    assert labels["maxProperties"] == 32
    keys, values = labels["propertyNames"]["pattern"], labels["additionalProperties"]["pattern"]
    assert all(matches(keys, key) for key in ("a", "env", "a.b_c-d/e", "9", "k" * 63))
    assert not any(matches(keys, key) for key in ("", "A", "-a", "a-", "a b", "k" * 64))
    assert all(matches(values, value) for value in ("", "prod", "A-b.c_D9", "v" * 63))
    assert not any(matches(values, value) for value in ("-x", "x.", "a/b", "v" * 64))
    configuration = instance["configuration"]
    assert not matches(configuration["propertyNames"]["pattern"], "a\x00b")


def test_objects_of_any_json_are_plain_and_say_their_rules_in_words(document):
    """configuration and details: `type: object` of any values, so client
    generators can read them (tests/test_generated_client.py); what the
    service refuses inside them is in the description."""
    schemas = document["components"]["schemas"]
    for name, field in [("Instance", "configuration"), ("InstanceCreate", "configuration"),
                        ("InstanceUpdate", "configuration"), ("Log", "details"),
                        ("LogCreate", "details")]:
        schema = schemas[name]["properties"][field]
        assert (schema["type"], schema["additionalProperties"]) == ("object", {}), name
        rules = schema["description"]
        assert "NUL" in rules and "2^64-1" in rules and f"{MAX_DEPTH} levels" in rules, rules


def test_no_schema_refers_to_itself(document):
    """A recursive schema is what client generators cannot resolve."""
    schemas = document["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"].rsplit("/", 1)[-1]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for name in schemas:
        seen, todo = set(), [name]
        while todo:
            for ref in refs(schemas[todo.pop()]):
                assert ref != name, f"{name} refers to itself"
                if ref in schemas and ref not in seen:
                    seen.add(ref)
                    todo.append(ref)


def test_texts_say_that_nul_and_blank_are_refused(document):
    instance = document["components"]["schemas"]["Instance"]["properties"]
    name = instance["name"]["pattern"]
    assert matches(name, "box") and matches(name, " a ")
    assert not any(matches(name, text) for text in (" ", "\t\n", "a\x00b"))
    message = document["components"]["schemas"]["LogCreate"]["properties"]["message"]
    assert not matches(message["pattern"], "a\x00b") and matches(message["pattern"], " ")


def test_the_time_filters_say_which_rfc_3339_timestamps_are_refused(document):
    parameters = {p["name"]: p for p in document["paths"][LOGS]["get"]["parameters"]
                  if "name" in p}
    for name in ("since", "until"):
        assert parameters[name]["schema"]["format"] == "date-time"
        description = parameters[name]["description"]
        assert "years 1 to 9999 in UTC" in description and "leap second" in description


def test_the_label_filter_states_its_grammar(document):
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/api/instances"]["get"][
        "parameters"] if "name" in p}
    grammar = parameters["label"]["pattern"]
    for good in ("env=prod", "env", "!env", "env!=prod", "env=", "env=prod,team,!canary,a!=b"):
        assert matches(grammar, good), good
    for bad in ("", "env,", ",env", "env==prod", "Env=x", "!env=x", "a=b=c", "a in (b)"):
        assert not matches(grammar, bad), bad


def test_every_body_schema_has_an_example_that_it_accepts(document):
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        assert schema.get("examples"), name
        for example in schema["examples"]:
            # Refs (#/components/...) resolve against the document.
            OAS31Validator({**schema, "components": document["components"]}).validate(example)


def test_the_batch_body_is_one_log_or_an_array_of_up_to_1000(document):
    body = document["paths"][LOGS]["post"]["requestBody"]["content"]["application/json"]
    single, batch = body["schema"]["oneOf"]
    assert single == {"$ref": "#/components/schemas/LogCreate"}
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)


# -- /api/docs ---------------------------------------------------------------

def test_the_docs_page_loads_swagger_ui_from_this_server_only(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    page.close()
    # Swagger UI's files, and the page's own script and style (the token).
    assets = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    assert assets and all(url.startswith(("/api/docs/assets/", "/ui/static/"))
                          for url in assets), assets
    assert "/api/docs/assets/swagger-ui-bundle.js" in assets
    assert "/api/openapi.json" in html
    for url in assets:
        with client.get(url) as resp:  # closes the file it streams
            assert resp.status_code == 200, url
            if url.startswith("/api/docs/assets/swagger-ui"):
                assert len(resp.get_data()) > 10_000, url


def test_an_unknown_docs_asset_is_a_problem_404(client):
    assert_problem(client.get("/api/docs/assets/nothing.js"), 404)
