"""The API describing itself: what the OpenAPI document says of every route
(errors, headers, conditional and idempotent requests), and the Swagger UI
page at /api/docs, whose assets come from the installed swagger-ui-py
package, so the page works on a machine with no internet.

The page is a shell of ours (routes/static/docs.html) rather than
flask-smorest's template, whose inline script a Content-Security-Policy
without 'unsafe-inline' would block; our script (docs.js) asks for the
token when the server wants one and starts Swagger UI with it (3.4)."""
from importlib.util import find_spec
from pathlib import Path

from apispec import BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, send_from_directory
from marshmallow import fields

from schema_fields import JSONObject

from routes.common import MAX_DEPTH
from routes.ui import POLICY, page_file, page_headers

# Located without importing the package, which would load handlers for a
# dozen web frameworks; only its static files are used.
ASSETS = Path(find_spec("swagger_ui").submodule_search_locations[0]) / "static"

page = Blueprint("docs_page", __name__, url_prefix="/api/docs")
# Swagger UI's stylesheet draws its icons as data: images.
page.after_request(page_headers(POLICY + "; img-src 'self' data:"))


@page.get("")
def docs():
    # Holds no data, so it loads without a token (routes/access.py).
    return page_file("docs.html")


@page.get("/assets/<path:filename>")
def asset(filename):
    return send_from_directory(ASSETS, filename, max_age=86400)


def problem_response(description):
    return {"description": description,
            "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}},
            "headers": {"X-Request-ID": "XRequestID"}}


# Every error status a route can answer, by what makes a route answer it.
ERRORS = {
    401: ("Unauthorized", "Tokens are configured (INSTANCES_API_TOKENS) and the request "
                          "has no valid `Authorization: Bearer` token."),
    400: ("BadRequest", "The body is not valid JSON, is empty, or is not a JSON object "
                        "(an array only where the route takes a batch)."),
    404: ("NotFound", "An id in the path is malformed or names nothing (a parent "
                      "instance included)."),
    409: ("Conflict", "The resource's state refuses the request, and nothing changed: a "
                      "heartbeat for an instance that has ended (`instance_status` and "
                      "`status_reason` say how), or one webhook past INSTANCES_MAX_WEBHOOKS."),
    410: ("Gone", "The `after` cursor names a row that is no longer kept (deleted with its "
                  "instance, purged by retention): start again from a position or without "
                  "`after`."),
    412: ("PreconditionFailed", "If-Match does not name the current ETag: the resource "
                                "changed since it was read. Nothing was written."),
    413: ("ContentTooLarge", "The body is larger than the configured limit."),
    415: ("UnsupportedMediaType", "A body whose Content-Type is not JSON in UTF-8, or a "
                                  "body without a Content-Type."),
    422: ("UnprocessableContent", "Validation failed: `errors` names every bad field under "
                                  "json, query or headers. Nothing was written."),
    500: ("InternalServerError", "An unexpected fault, logged with the request_id that "
                                 "the body carries."),
    503: ("ServiceUnavailable", "The database cannot take the request now: its write lock "
                                "is held elsewhere past the busy timeout, or the file is "
                                "read-only or full. Retry-After says when to try again; "
                                "nothing was written."),
}

HEADERS = {
    "XRequestID": {
        "description": "The request's X-Request-ID when it was a sane token, else one "
                       "the server generated. The server logs it with the request.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,200}$"}},
    "ETag": {
        "description": "Strong validator of this representation (a hash of the body); "
                       "send it back in If-None-Match or If-Match.",
        "schema": {"type": "string"}},
    "Location": {
        "description": "The URL of the created resource (not sent for a batch).",
        "schema": {"type": "string", "format": "uri"}},
    "IdempotentReplayed": {
        "description": "true when this is the stored response to an earlier request "
                       "with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]}},
    "XTotalCount": {
        "description": "How many rows match the filters, whatever the page.",
        "schema": {"type": "integer", "minimum": 0}},
    "Link": {
        "description": 'RFC 8288 links to the rel="next" and rel="prev" pages, keeping the '
                       "other query parameters.",
        "schema": {"type": "string"}},
}

PARAMETERS = {
    "XRequestIDParam": ("X-Request-ID", {
        "description": "Your id for this request, echoed and logged when it is 1 to 200 "
                       "characters of A-Z a-z 0-9 . _ : - (anything else is replaced).",
        "schema": {"type": "string"}}),
    "IdempotencyKey": ("Idempotency-Key", {
        "description": "Makes the POST safe to retry: for 24 hours, the same key with the "
                       "same body replays the first response and creates nothing; the "
                       "same key with another body is a 422.",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}),
    "IfNoneMatch": ("If-None-Match", {
        "description": "ETags you hold; 304 Not Modified when one is current.",
        "schema": {"type": "string"}}),
    "IfMatch": ("If-Match", {
        "description": "The ETag you read; the write happens only if it is still current "
                       "(else 412). `*` matches any version.",
        "schema": {"type": "string"}}),
}


class HttpDocs(BasePlugin):
    """apispec plugin adding to each operation what the routes share:
    the errors it can answer, the conditional and idempotency headers, and
    the headers of its responses. Schemas with an `EXAMPLE` publish it."""

    def __init__(self, schemas):
        self.schemas = schemas  # components no route names directly

    def init_spec(self, spec):
        super().init_spec(spec)
        # Before any schema is converted, the components below included.
        for plugin in spec.plugins:
            if isinstance(plugin, MarshmallowPlugin):
                plugin.converter.add_attribute_function(property_names)
                plugin.converter.add_attribute_function(json_rules)
        for name, schema in self.schemas.items():
            spec.components.schema(name, schema=schema)
        for name, header in HEADERS.items():
            spec.components.header(name, header)
        for name, (header, parameter) in PARAMETERS.items():
            spec.components.parameter(name, "header", {"name": header, **parameter})
        for name, description in ERRORS.values():
            spec.components.response(name, problem_response(description), lazy=True)
        spec.components.security_scheme("bearerAuth", {
            "type": "http", "scheme": "bearer",
            "description": "Needed on /api routes only when the server has tokens "
                           "(INSTANCES_API_TOKENS or INSTANCES_API_TOKENS_FILE)."})
        spec.components.response("NotModified", {
            "description": "If-None-Match names the current ETag; no body.",
            "headers": {"ETag": "ETag", "X-Request-ID": "XRequestID"}}, lazy=True)

    def schema_helper(self, name, definition, **kwargs):
        schema = kwargs.get("schema")
        example = vars(schema if isinstance(schema, type) else type(schema)).get("EXAMPLE")
        return {"examples": [example]} if example is not None else None

    def operation_helper(self, path=None, operations=None, rule=None, **kwargs):
        view = rule.endpoint.rsplit(".", 1)[-1]
        for method, operation in operations.items():
            # Names for generated clients: getInstances, patchInstanceById, ...
            operation["operationId"] = f"{method}{view}"
            document(operation, method, has_ids="{" in path, guarded=path.startswith("/api/"))


def document(operation, method, has_ids, guarded):
    # smorest keys responses by int; apispec would then write "422" twice.
    responses = {str(code): response for code, response in operation["responses"].items()}
    parameters = operation.setdefault("parameters", [])
    queries = any(isinstance(p, dict) and p.get("in") == "query" for p in parameters)
    errors = {500}
    if guarded:
        errors.add(401)
        # A token, or none at all when the server has no tokens configured.
        operation["security"] = [{"bearerAuth": []}, {}]
    if method != "get":
        errors.add(503)
    if has_ids:
        errors.add(404)
    if "requestBody" in operation:
        errors.update((400, 413, 415, 422))
    if queries:
        errors.add(422)
    parameters.append("XRequestIDParam")
    for code, response in responses.items():
        if code.startswith("2") and isinstance(response, dict):
            headers = response.setdefault("headers", {})
            headers["X-Request-ID"] = "XRequestID"
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("type") == "array":
                headers.update({"X-Total-Count": "XTotalCount", "Link": "Link"})
            elif "content" in response:
                headers["ETag"] = "ETag"
    if method == "get" and "ETag" in responses.get("200", {}).get("headers", {}):
        parameters.append("IfNoneMatch")
        responses["304"] = "NotModified"
    if method in ("put", "patch", "delete"):
        parameters.append("IfMatch")
        errors.add(412)
    if method == "post":
        parameters.append("IdempotencyKey")
        errors.add(422)     # a malformed or reused Idempotency-Key, body or none
        success = next(responses[code] for code in ("201", "200", "204") if code in responses)
        success.setdefault("headers", {}).update({"Idempotent-Replayed": "IdempotentReplayed"})
        if "201" in responses:
            success["headers"]["Location"] = "Location"
    for code in sorted(errors):
        responses[str(code)] = ERRORS[code][0]
    operation["responses"] = dict(sorted(responses.items()))


def property_names(converter, field, **kwargs):
    """An apispec attribute function: JSON Schema's `propertyNames` for an
    object whose keys have rules (environment variable names, label keys;
    no NUL in any key), which apispec leaves out."""
    if not isinstance(field, fields.Dict):
        return {}
    names = field.metadata.get("propertyNames", {})
    if field.key_field is not None:
        names = {**names, **converter.field2property(field.key_field)}
        names.pop("type", None)
    return {"propertyNames": names} if names else {}


# What routes/common.check_storable refuses anywhere in a body, said in words
# for the fields that hold any JSON (configuration, details). JSON Schema can
# only say it with a recursive schema, and the most used client generator
# (openapi-python-client) cannot resolve one: it drops every model and
# operation that uses it. So the document keeps them plain `type: object`,
# and tests/fuzz_hooks.py gives the fuzzer the rule as a schema.
JSON_RULES = (
    "Any JSON object. Refused anywhere inside it, however deeply nested (422 naming "
    "the place): a key or a string holding a NUL character (\\u0000); an integer "
    "outside -2^63 to 2^64-1 (send such a number as a string); objects and arrays "
    f"nested more than {MAX_DEPTH} levels deep, counting the request body as the first.")


def json_rules(converter, field, **kwargs):
    """An apispec attribute function: the description of a JSONObject that
    holds any JSON (no `values` field of its own), after the field's own."""
    if not isinstance(field, JSONObject) or field.value_field is not None:
        return {}
    own = field.metadata.get("description")
    return {"description": f"{own} {JSON_RULES}" if own else JSON_RULES}


def one_or_many(component, most):
    """The schema of a body that is one `component` or an array of 1..`most`."""
    ref = {"$ref": f"#/components/schemas/{component}"}
    return {"oneOf": [ref, {"type": "array", "items": ref, "minItems": 1, "maxItems": most}]}
