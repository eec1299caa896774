"""Client: a method per operation of the Instance Management API.

Results are the server's JSON: a single resource comes back as a Resource
(a dict carrying the answer's ETag), a list as a Page (a list with `total`,
`next_url` and `all()`), shaped as the TypedDicts of types.py say. Errors
raise ApiError (transport.py, which also says what is retried).

Not here: HTTP and retries (transport.py), the logging handler
(handler.py), the MCP server (mcp_server.py).
"""
import time
from urllib.parse import quote

import httpx

from .transport import ApiConnectionError, ApiError, Transport

# Statuses during which a follower keeps trying: the server restarting or
# busy, or a proxy in front of it waiting for it.
TRANSIENT = frozenset((429, 502, 503, 504))
# Seconds between a follower's tries while the server is away (the last repeats).
FOLLOW_BACKOFF = (0.5, 1, 2, 5)
PAGE = 1000


def joined(value):
    """A filter given as a list or tuple goes as the API's comma list."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(item) for item in value)
    return value


def selectors(label):
    """`label` as a dict ({"env": "prod"}: every key=value) or a string/list
    of the API's selectors (`env=prod,team,!canary`)."""
    if isinstance(label, dict):
        return ",".join(f"{key}={value}" for key, value in label.items())
    return joined(label)


def query(**params):
    return {name: joined(value) for name, value in params.items() if value is not None}


def segment(value):
    return quote(str(value), safe="")


class Client:
    """One object per server. `url` is the server's root
    (http://127.0.0.1:8080), `token` an API token if it needs one, `timeout`
    seconds per try. `max_attempts` and `max_retry_delay` (seconds of
    sleeping between tries, in all) bound the retries; `backoff` is the
    first step, doubling up to `max_backoff`. Use it as a context manager or
    call close(). Thread-safe: the handler's thread and the caller's share
    one."""

    def __init__(self, url, token=None, timeout=10.0, *, max_attempts=5, max_retry_delay=30.0,
                 backoff=0.2, max_backoff=5.0, http=None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.transport = Transport(self.url, token, timeout, max_attempts, max_retry_delay,
                                   backoff, max_backoff, http)
        self._request = self.transport.resource
        self._page = self.transport.page

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.transport.close()

    @staticmethod
    def etag(resource):
        """The ETag of a resource this client returned (for if_match=)."""
        return getattr(resource, "etag", None)

    @staticmethod
    def _if_match(if_match):
        return {"If-Match": if_match} if if_match else None

    # Instances -----------------------------------------------------------

    def list_instances(self, *, site_id=None, user_id=None, agent_id=None, status=None,
                       instance_type=None, q=None, label=None, sort=None, limit=None,
                       offset=None, **filters):
        """A page of instances. `status`, `instance_type` and `sort` take a
        list or a comma string; `label` a dict or the API's selectors;
        `filters` passes any other parameter (idle_for, expires_before)."""
        return self._page("/api/instances", query(
            site_id=site_id, user_id=user_id, agent_id=agent_id, status=status,
            instance_type=instance_type, q=q, label=selectors(label), sort=sort, limit=limit,
            offset=offset, **filters))

    def get_instance(self, instance_id):
        return self._request("GET", f"/api/instances/{segment(instance_id)}")

    def create_instance(self, *, site_id, user_id, name, **fields):
        """Create an instance (instance_type, status, agent_id, labels, ... as
        keywords). Sent with an Idempotency-Key: retries never make two."""
        body = {"site_id": site_id, "user_id": user_id, "name": name, **fields}
        return self._request("POST", "/api/instances", json=body)

    def update_instance(self, instance_id, *, if_match=None, **fields):
        """PATCH the fields given. With `if_match` (an ETag) the server
        refuses with 412 if the instance changed since that ETag was read."""
        return self._request("PATCH", f"/api/instances/{segment(instance_id)}", json=fields,
                             headers=self._if_match(if_match))

    def set_status(self, instance_id, status, reason=None, *, if_match=None):
        """Change the status; `reason` goes to `status_reason` (CONTRACT 4.1)."""
        fields = {"status": status}
        if reason is not None:
            fields["status_reason"] = reason
        return self.update_instance(instance_id, if_match=if_match, **fields)

    def delete_instance(self, instance_id, *, if_match=None):
        self._request("DELETE", f"/api/instances/{segment(instance_id)}",
                      headers=self._if_match(if_match))

    def count_instances(self, by=None, **filters):
        """Counts of the instances matching the list's filters, grouped `by`
        (a list or comma string of status, instance_type, site_id, ...,
        label:KEY)."""
        if "label" in filters:
            filters["label"] = selectors(filters["label"])
        return self._request("GET", "/api/instances/counts", params=query(by=by, **filters))

    def heartbeat(self, instance_id):
        """Record activity for the instance (CONTRACT 4.1): 204, nothing else
        changes; 409 (ApiError) when the instance has already ended."""
        self._request("POST", f"/api/instances/{segment(instance_id)}/heartbeat")

    # Logs ----------------------------------------------------------------

    def list_logs(self, instance_id, *, log_type=None, level=None, min_level=None, since=None,
                  until=None, after=None, wait=None, sort=None, limit=None, offset=None):
        """A page of an instance's logs (newest first; oldest first after a
        cursor `after`, held up to `wait` seconds for a new one)."""
        return self._page(f"/api/instances/{segment(instance_id)}/logs", query(
            log_type=log_type, level=level, min_level=min_level, since=since, until=until,
            after=after, wait=wait, sort=sort, limit=limit, offset=offset),
            timeout=self._held(wait))

    def get_log(self, instance_id, log_id):
        return self._request("GET", f"/api/instances/{segment(instance_id)}/logs/"
                                    f"{segment(log_id)}")

    def append_log(self, instance_id, message, *, log_type="agent_action", level="info",
                   details=None):
        body = {"log_type": log_type, "level": level, "message": message}
        if details is not None:
            body["details"] = details
        return self._request("POST", f"/api/instances/{segment(instance_id)}/logs", json=body)

    def append_logs(self, instance_id, entries):
        """Append 1..1000 logs (LogEntry dicts) at once: all stored or none."""
        response = self.transport.send("POST", f"/api/instances/{segment(instance_id)}/logs",
                                       json=list(entries))
        return response.json()

    def list_fleet_logs(self, *, instance_id=None, site_id=None, label=None, log_type=None,
                        level=None, min_level=None, since=None, until=None, after=None,
                        wait=None, sort=None, limit=None, offset=None):
        """A page of the logs of every instance (GET /api/logs, CONTRACT 4.3);
        `instance_id` takes a list of up to 100 ids."""
        return self._page("/api/logs", query(
            instance_id=instance_id, site_id=site_id, label=selectors(label),
            log_type=log_type, level=level, min_level=min_level, since=since, until=until,
            after=after, wait=wait, sort=sort, limit=limit, offset=offset),
            timeout=self._held(wait))

    def _held(self, wait):
        """A held request's own timeout: its wait plus the usual one."""
        return float(wait) + self.timeout if wait else None

    # Plans ---------------------------------------------------------------

    def list_plans(self, instance_id, *, status=None, plan_type=None, parent_id=None, sort=None,
                   limit=None, offset=None):
        return self._page(f"/api/instances/{segment(instance_id)}/plans", query(
            status=status, plan_type=plan_type, parent_id=parent_id, sort=sort, limit=limit,
            offset=offset))

    def get_plan(self, instance_id, plan_id):
        return self._request("GET", self._plan_path(instance_id, plan_id))

    def create_plan(self, instance_id, title, *, plan_type="task", **fields):
        """Create a plan (description, status, priority, instructions,
        parent_id as keywords)."""
        body = {"title": title, "plan_type": plan_type, **fields}
        return self._request("POST", f"/api/instances/{segment(instance_id)}/plans", json=body)

    def update_plan(self, instance_id, plan_id, *, if_match=None, **fields):
        return self._request("PATCH", self._plan_path(instance_id, plan_id), json=fields,
                             headers=self._if_match(if_match))

    def delete_plan(self, instance_id, plan_id, *, if_match=None):
        self._request("DELETE", self._plan_path(instance_id, plan_id),
                      headers=self._if_match(if_match))

    def plan_tree(self, instance_id):
        """Every plan of the instance as a tree: the plans without a parent,
        each with `children` (PlanNode), highest priority first, then oldest
        first."""
        plans = list(self.list_plans(instance_id, sort="-priority,created_at",
                                     limit=PAGE).all())
        nodes = {plan["id"]: {**plan, "children": []} for plan in plans}
        roots = []
        for plan in plans:
            parent = nodes.get(plan.get("parent_id"))
            (parent["children"] if parent is not None else roots).append(nodes[plan["id"]])
        return roots

    @staticmethod
    def _plan_path(instance_id, plan_id):
        return f"/api/instances/{segment(instance_id)}/plans/{segment(plan_id)}"

    # Events and webhooks (CONTRACT 4.4) ----------------------------------

    def list_events(self, *, type=None, instance_id=None, site_id=None, label=None, after=None,
                    wait=None, limit=None, offset=None):
        """A page of the fleet's changes; `type` a list or comma string
        (`instance.*` for a family)."""
        return self._page("/api/events", query(
            type=type, instance_id=instance_id, site_id=site_id, label=selectors(label),
            after=after, wait=wait, limit=limit, offset=offset), timeout=self._held(wait))

    def get_event(self, event_id):
        return self._request("GET", f"/api/events/{segment(event_id)}")

    def list_webhooks(self, *, limit=None, offset=None):
        return self._page("/api/webhooks", query(limit=limit, offset=offset))

    def get_webhook(self, webhook_id):
        return self._request("GET", f"/api/webhooks/{segment(webhook_id)}")

    def create_webhook(self, url, *, types=None, label=None, description=None, **fields):
        """Register a receiver of events (`types` a list or comma string,
        `label` selectors, as on list_events); the answer carries its
        `secret`, shown once."""
        body = {"url": url, **fields}
        for name, value in (("types", joined(types)), ("label", selectors(label)),
                            ("description", description)):
            if value is not None:
                body[name] = value
        return self._request("POST", "/api/webhooks", json=body)

    def update_webhook(self, webhook_id, *, if_match=None, **fields):
        """PATCH url, types, label, description or active."""
        if fields.get("types") is not None:
            fields["types"] = joined(fields["types"])
        if fields.get("label") is not None:
            fields["label"] = selectors(fields["label"])
        return self._request("PATCH", f"/api/webhooks/{segment(webhook_id)}", json=fields,
                             headers=self._if_match(if_match))

    def delete_webhook(self, webhook_id, *, if_match=None):
        self._request("DELETE", f"/api/webhooks/{segment(webhook_id)}",
                      headers=self._if_match(if_match))

    def rotate_webhook_secret(self, webhook_id):
        """A new secret (the old one still signs for 24 hours)."""
        return self._request("POST", f"/api/webhooks/{segment(webhook_id)}/rotate-secret")

    # Following -----------------------------------------------------------

    def tail(self, instance_id=None, *, after=None, last=0, wait=25, poll=1.0, on_error=None,
             on_resume=None, instance_ids=None, **filters):
        """Iterate over new logs as they are committed, forever: an
        instance's (`instance_id`), or the whole fleet's (None; GET /api/logs,
        where `instance_ids` (up to 100), site_id and label filter too).

        It starts after the newest log (or after the cursor `after`), first
        yielding the `last` newest existing logs, oldest first; while there
        is no log yet, it asks every `poll` seconds. Each request
        waits up to `wait` seconds (at most 30) for a new log, so a log is
        yielded the moment it lands, each exactly once, in commit order.
        Connection errors, 429 and 502-504 (a server restarting) are waited
        out with backoff: `on_error(reason, failures)` is called on each,
        `on_resume()` once the server answers again. A cursor the server
        purged (410) starts again from the newest log. Any other error (a
        404 once the instance is deleted, a 401) raises ApiError."""
        path = (f"/api/instances/{segment(instance_id)}/logs" if instance_id is not None
                else "/api/logs")
        if "label" in filters:
            filters["label"] = selectors(filters["label"])
        filters = query(instance_id=instance_ids, **filters)
        cursor, shown, failures = after, set(), 0
        while True:
            try:
                if cursor is None:
                    page = self.transport.page(path, {**filters, "limit": max(last, 1)},
                                               retry=False)
                else:
                    page = self.transport.page(
                        path, {**filters, "after": cursor, "wait": wait, "limit": PAGE},
                        timeout=self._held(wait), retry=False)
            except ApiError as exc:
                if exc.status == 410 and cursor is not None:
                    cursor, last = None, 0
                    continue
                if not isinstance(exc, ApiConnectionError) and exc.status not in TRANSIENT:
                    raise
                if on_error is not None:
                    on_error(str(exc), failures)
                time.sleep(FOLLOW_BACKOFF[min(failures, len(FOLLOW_BACKOFF) - 1)])
                failures += 1
                continue
            if failures and on_resume is not None:
                on_resume()
            failures = 0
            if cursor is None:
                if not page:
                    # No log yet: every log that comes is new, however many
                    # land between two polls.
                    last = PAGE
                    time.sleep(poll)
                    continue
                # Newest first. The cursor follows commit order and this page
                # the time logs were stamped: one of these may come again.
                cursor = page[0]["id"]
                shown = {log["id"] for log in page}
                yield from (list(reversed(page))[-last:] if last else [])
                last = 0
                continue
            if page:
                cursor = next_cursor(page)
            for log in page:
                if log["id"] not in shown:
                    yield log


def next_cursor(page):
    """Where to go on from a cursor page: the `after` of its Link rel="next"
    (on the fleet feed, a position that outlives deleted logs), else its
    last log."""
    if page.next_url:
        after = httpx.URL(page.next_url).params.get("after")
        if after:
            return after
    return page[-1]["id"]
