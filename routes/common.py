"""What the three resources share: the strict request parser and Blueprint,
row lookups, and list handling (filters, order, pagination headers)."""
from urllib.parse import urlencode

import orjson
from flask import request, url_for
from flask_smorest import Blueprint as _Blueprint, abort
from marshmallow import RAISE
from webargs.core import is_json
from webargs.flaskparser import FlaskParser

from models import Instance

PAGING = ("limit", "offset")


class StrictParser(FlaskParser):
    """webargs parser with the contract's body and query rules."""

    # 1.4: unknown query parameters are 422 (webargs would drop them), so a
    # typo cannot turn a filtered list into an unfiltered one.
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE, "querystring": RAISE,
    }

    def _raw_load_json(self, req):
        return read_json_object(req)


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = StrictParser()


def read_json_object(req):
    """The request body as a dict, or the 400/413/415 the contract names.

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
    if not isinstance(data, dict):
        abort(400, message="The request body must be a JSON object.")
    return data


def get_or_404(model, row_id, *where):
    """The row with this id (and matching `where`), or 404 naming the kind."""
    row = model.get_or_none(model.id == row_id, *where)
    if row is None:
        not_found(model, row_id)
    return row


def require_instance(instance_id):
    """404 unless the instance exists. Nested routes need only its id, so this
    reads the index, not the row and its JSON columns."""
    if not Instance.select(Instance.id).where(Instance.id == instance_id).exists():
        not_found(Instance, instance_id)


def children_of(model, instance_id):
    """The rows of a nested `model` under an existing instance."""
    require_instance(instance_id)
    return model.select().where(model.instance == instance_id)


def not_found(model, row_id):
    abort(404, message=f"No {noun(model)} with id {row_id}.")


def noun(model):
    return model._meta.table_name.rsplit("_", 1)[-1]


def created(row, endpoint, **path):
    """A 201 body with the Location of the new row."""
    return row, {"Location": url_for(endpoint, _external=True, **path)}


def list_response(query, args):
    """One page of `query` filtered by every non-paging argument (each names a
    column of the same name), newest first, with X-Total-Count and Link."""
    model = query.model
    filters = {name: value for name, value in args.items() if name not in PAGING}
    if filters:
        query = query.where(*(getattr(model, name) == value for name, value in filters.items()))
    total = query.count()
    limit, offset = args["limit"], args["offset"]
    # 1.4: created_at descending with id as tie-break gives a total order, so
    # pages never repeat or skip a row.
    rows = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit).offset(offset)
    headers = {"X-Total-Count": str(total)}
    link = page_links(total, limit, offset)
    if link:
        headers["Link"] = link
    return list(rows), headers


def page_links(total, limit, offset):
    """RFC 8288 next/prev links that keep every other query parameter.

    With limit=0 there is no next page to walk to, so no links are given.
    """
    if limit == 0:
        return None
    links = []
    if offset + limit < total:
        links.append((offset + limit, "next"))
    if offset > 0:
        links.append((max(0, min(offset, total) - limit), "prev"))
    return ", ".join(f'<{page_url(page_offset)}>; rel="{rel}"' for page_offset, rel in links)


def page_url(offset):
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "offset"]
    params.append(("offset", offset))
    return f"{request.base_url}?{urlencode(params)}"
