"""Bearer tokens (CONTRACT 2.3): when tokens are configured, every /api
request needs one, including requests for routes that do not exist, so that
nobody can discover routes without a token. Outside /api nothing needs one
(/healthz, the dashboard) but /metrics; inside /api, only the docs page's shell and its
assets are open, as they hold no data (3.4)."""
import hmac

from flask import request
from flask_smorest import abort


def load_tokens(listed, path):
    """Tokens from a comma-separated setting and from a file (one per line,
    blank lines and # comments ignored), as bytes for compare_digest."""
    tokens = [token.strip() for token in str(listed or "").split(",")]
    if path:
        with open(path, encoding="utf-8") as lines:
            tokens.extend(line.strip() for line in lines if not line.lstrip().startswith("#"))
    return tuple(token.encode() for token in tokens if token)


def protected(path):
    # 3.4: the docs page's shell and Swagger UI's files hold no data and load
    # without a token; its script then asks for one, for the document and
    # every request. The document itself (/api/openapi.json) stays guarded.
    if path == "/api/docs" or path.startswith("/api/docs/assets/"):
        return False
    return path == "/api" or path.startswith("/api/") or path == "/metrics"


def require_token(tokens):
    """401 with a WWW-Authenticate challenge unless the request carries one
    of `tokens` as `Authorization: Bearer <token>`."""
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and known(sent.strip().encode(), tokens):
        return
    challenge = 'Bearer realm="instance-api"'
    if scheme:
        challenge += ', error="invalid_token"'
    abort(401, message="Send a valid token: Authorization: Bearer <token>.",
          headers={"WWW-Authenticate": challenge})


def known(sent, tokens):
    # Every token is compared, in constant time each, so the time taken says
    # nothing about which token (or how much of one) matched.
    found = False
    for token in tokens:
        found |= hmac.compare_digest(sent, token)
    return found
