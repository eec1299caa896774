"""Idempotency-Key on POST (CONTRACT 2.2): a retried create replays the
first answer instead of creating a second record."""
import hashlib
import re
from datetime import timedelta
from functools import wraps

import orjson
from flask import current_app, request
from flask_smorest import abort

from models import IdempotencyKey
from storage.engines import lock_key
from storage.fields import utcnow
from storage.writes import write

HEADER = "Idempotency-Key"
# Visible ASCII: what UUIDs, ULIDs and random tokens are made of, and safe
# to store and to show back in an error.
KEY = re.compile(r"[\x21-\x7e]{1,255}")
KEPT_FOR = timedelta(hours=24)


def idempotent(view):
    """Wrap a view so that a POST carrying an Idempotency-Key runs once.

    The lookup, the create and the record of its response share one write
    transaction, so a concurrent request with the same key waits for the
    first to commit and then replays it. Only 2xx answers are kept: a request
    that failed can be corrected and sent again under the same key.
    """
    @wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return view(*args, **kwargs)
        if not KEY.fullmatch(key):
            refuse("Must be 1 to 255 visible ASCII characters, such as a UUID.")
        fingerprint = fingerprint_of(request)
        with write():
            lock_key(key)
            IdempotencyKey.delete().where(IdempotencyKey.created_at < utcnow() - KEPT_FOR).execute()
            record = IdempotencyKey.get_or_none(IdempotencyKey.key == key)
            if record is not None:
                if record.fingerprint != fingerprint:
                    refuse("Already used in the last 24 hours for a different request "
                           "(method, path or body); send a new key with a new request.")
                return replay(record)
            response = current_app.make_response(view(*args, **kwargs))
            if 200 <= response.status_code < 300:
                IdempotencyKey.create(
                    key=key, fingerprint=fingerprint, status=response.status_code,
                    body=response.get_data(as_text=True),
                    location=response.headers.get("Location"))
        return response
    return wrapper


def refuse(message):
    abort(422, errors={"headers": {HEADER: [message]}})


def fingerprint_of(req):
    """A digest of what makes two POSTs the same request: the route, its path
    ids (canonical) and the body as JSON (so spacing and key order do not
    matter)."""
    body = req.get_data(cache=True)
    try:
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        pass  # the view will refuse it; the raw bytes still tell bodies apart
    path = sorted((name, str(value)) for name, value in req.view_args.items())
    route = orjson.dumps([req.method, req.url_rule.rule, path])
    return hashlib.sha256(route + b"\n" + body).hexdigest()


def replay(record):
    response = current_app.response_class(
        record.body, status=record.status, mimetype="application/json")
    if record.location:
        response.headers["Location"] = record.location
    response.headers["Idempotent-Replayed"] = "true"
    return response
