"""The client's HTTP layer: one pooled httpx connection per Client, the
problem details as ApiError, and the retry rule that keeps a retried call
from writing twice.

What is retried (CONTRACT 2.2, 4.6, 4.7), with exponential backoff and
jitter, at most `max_attempts` tries and `max_retry_delay` seconds of
sleeping in all:
- a connection error (refused, reset, a timeout): for GET, PUT, PATCH and
  DELETE, and for a POST only when it carries an Idempotency-Key (every
  POST this client sends does: the server replays the first answer to the
  same key and body, so a create whose answer was lost is not made twice);
- 429 and a 503 that carries Retry-After (a busy write lock), waiting at
  least what Retry-After asks;
- never a 503 whose problem type ends with `query-timeout` (a read stopped
  by the server's time limit: asking again would cost as much), nor any
  other status.

Not here: the API's operations (client.py).
"""
import email.utils
import random
import time
import uuid
from datetime import datetime, timezone

import httpx

IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRIED_METHODS = frozenset(("GET", "HEAD", "PUT", "PATCH", "DELETE"))


class ApiError(Exception):
    """An answer outside 2xx, with its RFC 9457 problem details: `status`,
    `type`, `title`, `detail`, and `errors` naming each bad field
    (`{"json": {"name": ["..."]}, "query": {...}}`; {} when none)."""

    def __init__(self, status, title, detail=None, errors=None, type=None, body=None,
                 headers=None):
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or {}
        self.type = type
        self.body = body
        self.headers = headers or {}
        super().__init__(status, title, detail, errors, type, body, headers)

    def __str__(self):
        return self.describe()

    @classmethod
    def from_response(cls, response):
        try:
            body = response.json()
        except ValueError:
            body = None
        problem = body if isinstance(body, dict) else {}
        return cls(response.status_code, problem.get("title") or response.reason_phrase,
                   problem.get("detail"), problem.get("errors"), problem.get("type"),
                   body, dict(response.headers))

    @property
    def fields(self):
        """The bad fields flattened: {"json.name": ["..."], "json.3.message": [...]}."""
        flat = {}

        def walk(prefix, value):
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
            else:
                flat[prefix] = value if isinstance(value, list) else [value]
        walk("", self.errors)
        return flat

    def describe(self):
        text = f"{self.status} {self.title}" if self.status is not None else str(self.title)
        if self.detail and self.detail != self.title:
            text += f": {self.detail}"
        for field, messages in self.fields.items():
            text += f"\n  {field}: {' '.join(str(m) for m in messages)}"
        return text


class ApiConnectionError(ApiError):
    """The server could not be reached (or the connection dropped) on every
    try. `status` is None, `title` says why; the httpx error is the __cause__."""


class Resource(dict):
    """A resource as the server answered it (a dict), with the answer's
    `etag` for a later `if_match=` (Client.etag(resource) reads it too)."""
    __slots__ = ("etag",)

    def __init__(self, data, etag=None):
        super().__init__(data)
        self.etag = etag


class Page(list):
    """One page of a list (a list of its items) with `total` (X-Total-Count,
    None when the server leaves it out) and `next_url` (the Link rel="next",
    None on the last page). `all()` iterates over this page and every next
    one, following the links."""

    def __init__(self, items, total, next_url, fetch):
        super().__init__(items)
        self.total = total
        self.next_url = next_url
        self._fetch = fetch

    def next_page(self):
        """The page the Link rel="next" names, or None after the last."""
        return self._fetch(self.next_url) if self.next_url else None

    def all(self):
        page = self
        while page is not None:
            yield from page
            page = page.next_page()


def retry_after(response):
    """Seconds a Retry-After header asks for (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retryable_status(response):
    """Whether an answer is one to ask again (module docstring), and how
    long the server asked to wait."""
    status = response.status_code
    if status == 429:
        return True, retry_after(response)
    if status == 503:
        wait = retry_after(response)
        if wait is None or problem_type(response).endswith("query-timeout"):
            return False, None
        return True, wait
    return False, None


def problem_type(response):
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("type") or "") if isinstance(body, dict) else ""


class Transport:
    """Requests with retries over one httpx.Client (keep-alive, pooled)."""

    def __init__(self, url, token=None, timeout=10.0, max_attempts=5, max_retry_delay=30.0,
                 backoff=0.2, max_backoff=5.0, http=None):
        headers = {"Accept": "application/json", "User-Agent": "instance-api-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.max_retry_delay = max_retry_delay
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.http = http or httpx.Client(headers=headers, timeout=timeout)
        if http is not None:
            self.http.headers.update(headers)

    def close(self):
        self.http.close()

    def delay(self, attempt, asked):
        """Full jitter over an exponential step; at least what the server asked."""
        step = min(self.max_backoff, self.backoff * 2 ** attempt)
        chosen = random.uniform(step / 2, step)
        return max(chosen, asked) if asked is not None else chosen

    def send(self, method, path, *, params=None, json=None, content=None, headers=None,
             retry=True, timeout=None):
        """The httpx response to one call, retried as the module says; an
        answer outside 2xx raises ApiError. `path` is a path under the base
        URL or an absolute URL (a Link); the body is `json`, or `content`
        already encoded."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = dict(headers or {})
        if method == "POST":
            # The same key on every try of this call (and only this call).
            headers.setdefault(IDEMPOTENCY_HEADER, str(uuid.uuid4()))
        may_retry = retry and (method in RETRIED_METHODS or IDEMPOTENCY_HEADER in headers)
        if params:
            params = {name: value for name, value in params.items() if value is not None}
        slept = 0.0
        attempt = 0
        while True:
            try:
                response = self.http.request(method, url, params=params, json=json,
                                             content=content, headers=headers,
                                             timeout=timeout if timeout is not None
                                             else httpx.USE_CLIENT_DEFAULT)
            except httpx.TransportError as exc:
                again, asked, failure = may_retry, None, exc
            else:
                if response.is_success:
                    return response
                if method == "DELETE" and attempt > 0 and response.status_code == 404:
                    # An earlier try deleted it and its answer was lost.
                    return response
                again, asked = retryable_status(response)
                again = again and may_retry
                failure = response
            pause = self.delay(attempt, asked)
            attempt += 1
            if not again or attempt >= self.max_attempts or slept + pause > self.max_retry_delay:
                if isinstance(failure, httpx.Response):
                    raise ApiError.from_response(failure)
                raise ApiConnectionError(
                    None, f"cannot reach the server: {type(failure).__name__}: {failure}"
                ) from failure
            time.sleep(pause)
            slept += pause

    def resource(self, method, path, **kwargs):
        """A single resource (Resource, with its ETag), or None for 204."""
        response = self.send(method, path, **kwargs)
        if response.status_code == 204 or not response.is_success or not response.content:
            return None
        return Resource(response.json(), response.headers.get("ETag"))

    def page(self, path, params=None, timeout=None, retry=True):
        response = self.send("GET", path, params=params, timeout=timeout, retry=retry)
        total = response.headers.get("X-Total-Count")
        link = response.links.get("next")
        return Page(response.json(), int(total) if total is not None else None,
                    link["url"] if link else None, self.page)
