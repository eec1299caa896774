"""What the three resources share: the strict request parser and Blueprint,
row lookups and preconditions. Lists are routes/lists.py."""
import json
import re

import orjson
from flask import current_app, request
from flask.globals import request_ctx
from flask_smorest import Blueprint as _Blueprint, abort
from marshmallow import RAISE
from webargs.core import is_json
from webargs.flaskparser import FlaskParser
from werkzeug.http import generate_etag

from models import Instance
from storage.engines import for_write
from storage.reads import Slot, representations, run
from routes.idempotency import idempotent


class StrictParser(FlaskParser):
    """webargs parser with the contract's body and query rules."""

    # 1.4: unknown query parameters are 422 (webargs would drop them), so a
    # typo cannot turn a filtered list into an unfiltered one.
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE, "querystring": RAISE,
    }

    def load_json(self, req, schema):
        return read_json_body(req, arrays=getattr(schema, "ACCEPTS_ARRAY", False))

    def load_querystring(self, req, schema):
        # webargs would keep the first of ?status=a&status=b and drop the
        # rest, silently; comma lists are the way to send several values.
        args, errors = {}, {}
        for key, values in req.args.lists():
            if "\0" in values[0]:
                errors[key] = [NUL_MESSAGE]
            elif len(values) > 1:
                errors[key] = ["Given more than once; send one value (or a comma list)."]
            args[key] = values[0]
        if errors:
            abort(422, errors={"query": dict(sorted(errors.items()))})
        # With one value per key, and no query field that takes a key
        # repeated, a dict is what webargs' MultiDictProxy would show the
        # schema. The proxy looks each field up in the query's MultiDict, and
        # each field not given there raised (and caught) an exception: a
        # tenth of a list page's time in-process.
        return args


class Blueprint(_Blueprint):
    """smorest's Blueprint with the strict parser, prebuilt argument schemas,
    ETags on single resources, and Idempotency-Key handling on every POST."""

    ARGUMENTS_PARSER = StrictParser()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_request(tag_representation)

    def arguments(self, schema, *args, **kwargs):
        # One schema instance per route: given a class, webargs builds a new
        # instance (deep-copying every field) on each request, an eighth of
        # the time of a small POST.
        return super().arguments(schema() if isinstance(schema, type) else schema,
                                 *args, **kwargs)

    def add_url_rule(self, rule, endpoint=None, view_func=None, **options):
        # 2.2: every POST honours Idempotency-Key, without each view asking.
        if getattr(view_func, "post", None) is not None:
            view_func.post = idempotent(view_func.post)
        # The views keep no state: one instance serves every request.
        view_func.init_every_request = False
        return super().add_url_rule(rule, endpoint, view_func, **options)


def read_json_body(req, arrays=False):
    """The request body as a dict (or, where `arrays`, a list), or the
    400/413/415 the contract names.

    1.5/1.6: a body needs a JSON Content-Type (415), must not be empty or
    malformed and must be an object (400). orjson is strict where the
    standard library is lenient: it rejects NaN/Infinity, numbers beyond a
    double, lone surrogates, invalid UTF-8 and nesting past 1024 levels.
    """
    if not req.mimetype:
        if req.content_length or "chunked" in req.headers.get("Transfer-Encoding", ""):
            abort(415, message="Send the body with Content-Type: application/json.")
        abort(400, message="The request body is empty; send a JSON object.")
    if not is_json(req.mimetype):
        abort(415, message=f"Content-Type {req.mimetype} is not JSON; "
                           "send application/json.")
    if req.mimetype_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        abort(415, message="JSON bodies must be encoded as UTF-8.")
    body = req.get_data(cache=True)  # past MAX_CONTENT_LENGTH this raises 413
    if not body:
        abort(400, message="The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        abort(400, message=f"The request body is not valid JSON: {exc}.")
    if not (isinstance(data, dict) or (arrays and isinstance(data, list))):
        # 2.4: the batch of logs is the only array body.
        abort(400, message="The request body must be a JSON object"
                           + (" or an array of them." if arrays else "."))
    check_storable(data, body)
    return data


# orjson writes at most 254 levels, and a response wraps the stored value in
# more; deep nesting is also a cheap way to make a server work hard.
MAX_DEPTH = 64
NUL_MESSAGE = "Contains a NUL character (\\u0000), which is not stored."
# An integer literal past 64 bits: orjson would read it as a double and keep
# only its first 16 digits. 19 digits, not 20: below -2^63 begins at
# -9223372036854775809. Strings are checked again below, so a long run of
# digits inside a string only costs a second look.
LONG_INTEGER = re.compile(rb"\d{19}")


def require_no_body():
    """For a POST that takes nothing: no body at all, or `{}` (any other
    JSON is 422 naming its keys; a body that is not JSON 400/415, as for
    every body)."""
    if not request.content_length and "chunked" not in request.headers.get(
            "Transfer-Encoding", ""):
        return
    data = read_json_body(request)
    if data:
        abort(422, errors={"json": {key: ["Unknown field."] for key in sorted(data)}})


def check_storable(data, body):
    """422 naming the place of a value that could not come back exactly as
    sent: nesting past MAX_DEPTH, a string with NUL (PostgreSQL cannot store
    it, and C tools cut the string there), or an integer beyond 64 bits.
    Cheap byte scans decide whether the parsed data needs walking at all."""
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nests_deeper(data, MAX_DEPTH):
        refuse_at(find(data, lambda value, depth: depth > MAX_DEPTH
                       and isinstance(value, (dict, list))),
                  f"Nested deeper than {MAX_DEPTH} levels; the service keeps at most that.")
    if b"\\u0000" in body:
        refuse_at(find(data, lambda value, depth: isinstance(value, str) and "\0" in value),
                  NUL_MESSAGE)
    if LONG_INTEGER.search(body):
        # The standard library keeps integers exact; orjson has already
        # refused everything else it would accept too leniently.
        refuse_at(find(json.loads(body), lambda value, depth: isinstance(value, int)
                       and not -(2**63) <= value < 2**64),
                  "An integer beyond 64 bits cannot be kept exactly; send it as a string.")


def nests_deeper(data, limit):
    """Whether objects and arrays in `data` nest past `limit` levels (the body
    is level 1). Looks at containers only, level by level: a batch of 1,000
    logs has more than `limit` brackets without being deep, and `find` would
    visit every value with its path."""
    level, containers = 1, [data]
    while containers and level <= limit:
        containers = [child for value in containers
                      for child in (value.values() if isinstance(value, dict) else value)
                      if isinstance(child, (dict, list))]
        level += 1
    return bool(containers)


def refuse_at(where, message):
    if where is not None:
        abort(422, errors={"json": {where: [message]}})


def find(data, bad):
    """The dotted path (keys and indexes) of the first value or key for which
    `bad(value, depth)` is true (the body is depth 1), or None. Iterative:
    bodies nest up to 1024 levels, beyond Python's recursion limit."""
    stack = [((), data, 1)]
    while stack:
        path, value, depth = stack.pop()
        if bad(value, depth):
            return ".".join(map(str, path)) or "_schema"
        if isinstance(value, dict):
            for key, item in value.items():
                if bad(key, depth + 1):
                    return ".".join(map(str, (*path, key)))
                stack.append(((*path, key), item, depth + 1))
        elif isinstance(value, list):
            stack.extend(((*path, index), item, depth + 1) for index, item in enumerate(value))
    return None


def invalid(where, field, message):
    """422 for a value that passed the schema but not a database check."""
    abort(422, errors={where: {field: [message]}})


def get_or_404(model, row_id, instance_id=None):
    """The representation of the row with this id (under `instance_id`, for a
    nested resource), or 404 naming the kind."""
    scope = {"id": row_id} if instance_id is None else {"id": row_id, "instance": instance_id}
    rows = representations(model, ("one", model, *scope),
                           lambda: model.select().where(*matching(model, scope)), scope)
    if not rows:
        not_found(model, row_id)
    return rows[0]


def get_for_write(model, row_id, schema, instance_id=None):
    """The row a PUT/PATCH/DELETE is about to change, once its preconditions
    hold. Call it inside storage.writes.write(): the row is locked, so nobody changes
    it between this check and the write."""
    query = model.select().where(model.id == row_id)
    if instance_id is not None:
        query = query.where(model.instance == instance_id)
    row = for_write(query).first()
    if row is None:
        not_found(model, row_id)
    check_if_match(row, schema)
    return row


def require_instance(instance_id, lock=False):
    """404 unless the instance exists. Nested routes need only its id, so this
    reads the index, not the row and its JSON columns. Writes `lock` it, so
    it cannot be deleted before what they add under it is committed."""
    def build():
        query = Instance.select(Instance.id).where(Instance.id == Slot("id"))
        return for_write(query) if lock else query

    if run(("instance exists", lock), build, {"id": instance_id}).fetchone() is None:
        not_found(Instance, instance_id)


def matching(model, scope):
    """Conditions: each column named in `scope` equals its value there."""
    return [getattr(model, name) == Slot(name) for name in scope]


def not_found(model, row_id):
    abort(404, message=f"No {noun(model)} with id {row_id}.")


def noun(model):
    return model._meta.table_name.rsplit("_", 1)[-1]


def created(row, endpoint, **path):
    """A 201 body with the Location of the new row."""
    # As url_for(endpoint, _external=True, **path) builds it, with the
    # request's own URL adapter and without url_for's checks and defaults
    # (a third of its time), which no route here uses.
    return row, {"Location": request_ctx.url_adapter.build(endpoint, path, force_external=True)}


# -- ETags (CONTRACT 2.2) ----------------------------------------------------

def etag_of(row, schema):
    """The strong ETag of a row's JSON representation (`schema` is the output
    schema class): the hash of the very bytes a GET returns, so it changes
    exactly when the body does."""
    return generate_etag(current_app.json.dumps(schema().dump(row)).encode())


def tag_representation(response):
    """ETag every single-resource response (a JSON object with 200/201);
    answer a GET/HEAD whose If-None-Match names it with 304."""
    if response.status_code in (200, 201) and response.is_sequence:
        body = response.get_data()
        if body[:1] == b"{" and response.content_type == "application/json":
            # The header as set_etag(generate_etag(body)) writes it, without
            # their checks and parsing: they were a tenth of a small GET's time.
            response.headers["ETag"] = f'"{generate_etag(body)}"'
            # Only a conditional request can change the answer.
            environ = request.environ
            if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ:
                response.make_conditional(request)
    return response


def check_if_match(row, schema):
    """412 unless If-Match (when sent) names the row's current ETag, so an
    edit based on a stale read cannot overwrite someone else's change."""
    if request.if_match and not request.if_match.contains(etag_of(row, schema)):
        abort(412, message=f"The {noun(type(row))} changed since the ETag in If-Match was "
                           "read; GET it again and reapply the change.")
