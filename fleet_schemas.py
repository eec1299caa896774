"""Input rules and output shapes of the fleet's feeds and webhooks
(CONTRACT 4.3, 4.4): the fleet log list's query, events, and webhooks.

Kept apart from schemas.py (the resources of Parts 1 to 3) by size; the
same habits hold: `<Noun>Schema` is the output, `<Noun>QuerySchema` a list's
query, `<Noun>CreateSchema` / `<Noun>UpdateSchema` the bodies.
"""
import re
import uuid

from marshmallow import (
    Schema, ValidationError, fields, pre_load, validate, validates_schema,
)
from webargs.fields import DelimitedList

from feeds import EVENT_TYPES, parse_position
from labels import SELECTORS, LabelSelectors, parse_selectors
from schema_fields import JSONObject, Moment, Pattern, Text
from schemas import (
    WAIT_MAX, InputSchema, ListQuerySchema, LogQuerySchema, Representation, Seconds,
)

MAX_IDS = 100
UUID_PATTERN = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
UUID_TEXT = re.compile(UUID_PATTERN)
# The families `type` takes (`instance.*`), with their members.
FAMILIES = {f"{family}.*": tuple(kind for kind in EVENT_TYPES if kind.startswith(f"{family}."))
            for family in ("instance", "plan")}


class Cursor(fields.String):
    """`after`: a position from a next link (`p...`), or the id of a row to
    start after. Loads as a feeds.Position or a uuid.UUID."""

    default_error_messages = {"invalid": (
        "Not a cursor: give the `after` of a next link (p followed by digits) or the id "
        "(a UUID) of a row to start after.")}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        position = parse_position(text)
        if position is not None:
            return position
        if not UUID_TEXT.fullmatch(text):
            raise self.make_error("invalid")
        return uuid.UUID(text)


def cursor(noun):
    pattern = rf"^(p\d{{1,18}}(\.\d{{1,18}})?|{UUID_PATTERN})$"
    return Cursor(metadata={"pattern": pattern, "description": (
        f"Where to start: the `after` of the previous page's next link (a position, which "
        f"stays valid when rows are deleted), `p0` for the oldest {noun} kept, or the id of "
        f"a {noun}. The list is then the {noun}s committed after it, oldest first; follow "
        f"the next link and you see every {noun} once.")})


def id_list():
    return DelimitedList(fields.UUID(), validate=validate.Length(1, MAX_IDS), metadata={
        "description": f"One instance id or a comma list of up to {MAX_IDS}."})


def wait_field(noun):
    return Seconds(validate=validate.Range(0, WAIT_MAX), metadata={"description": (
        f"With `after`: when no {noun} matching the other filters follows the cursor, hold "
        f"the request up to this many seconds (0 to {WAIT_MAX}) and answer as soon as one "
        "is committed, by any process; at the deadline, answer `[]`.")})


class FleetLogQuerySchema(LogQuerySchema):
    """/api/logs: the log list's filters, the instance's, and a fleet cursor."""
    after = cursor("log")
    wait = wait_field("log")
    instance_id = id_list()
    site_id = fields.UUID()
    label = LabelSelectors()


_TYPE_NAMES = "|".join(name.replace(".", r"\.").replace("*", r"\*")
                       for name in (*EVENT_TYPES, *FAMILIES))
TYPES_PATTERN = f"^({_TYPE_NAMES})(,({_TYPE_NAMES}))*$"


class EventTypes(fields.String):
    """`type`: a comma list of event types or families (`instance.*`); loads
    as the list of types, sorted, without repeats."""

    def __init__(self, **kwargs):
        super().__init__(metadata={"pattern": TYPES_PATTERN, "description": (
            f"A comma list of {', '.join(EVENT_TYPES)}; `instance.*` and `plan.*` stand for "
            "their family.")}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return parse_types(super()._deserialize(value, attr, data, **kwargs))


def parse_types(text):
    """The sorted list of event types a `type` filter names, or ValidationError."""
    found = set()
    for name in text.split(","):
        if name in FAMILIES:
            found.update(FAMILIES[name])
        elif name in EVENT_TYPES:
            found.add(name)
        else:
            raise ValidationError(f"Unknown event type {name!r}; use "
                                  f"{', '.join((*EVENT_TYPES, *FAMILIES))}.")
    return sorted(found)


class EventQuerySchema(ListQuerySchema):
    type = EventTypes()
    instance_id = id_list()
    site_id = fields.UUID()
    # On the instance as it was right after the change (before it, for a deletion).
    label = LabelSelectors()
    after = cursor("event")
    wait = wait_field("event")

    @validates_schema
    def wait_follows_a_cursor(self, data, **kwargs):
        if "wait" in data and "after" not in data:
            raise ValidationError("wait needs after=<a position or an event id>.", "wait")
        if "wait" in data and data.get("limit") == 0:
            raise ValidationError("A page of limit=0 never has an event to wait for.", "wait")


class EventSchema(Representation):
    id = fields.UUID(dump_only=True)
    type = fields.String(validate=validate.OneOf(EVENT_TYPES))
    at = Moment()
    instance_id = fields.UUID()
    plan_id = fields.UUID(allow_none=True)
    data = JSONObject(allow_none=True, metadata={"description": (
        "The instance or plan as a GET answered right after the change (null for a "
        "deletion), every environment variable's value shown as \"[redacted]\".")})

    EXAMPLE = {
        "id": "01a2506f-e042-7f0b-8175-dbb27dd1dcd0", "type": "instance.updated",
        "at": "2026-12-07T12:17:18.910123+00:00",
        "instance_id": "01a2506f-dff9-7032-8bf9-8a35db88bd03", "plan_id": None,
        "data": {"id": "01a2506f-dff9-7032-8bf9-8a35db88bd03", "status": "running",
                 "environment_variables": {"TOKEN": "[redacted]"}},
    }


# -- webhooks -------------------------------------------------------------------------

class JSONBoolean(fields.Boolean):
    """JSON true or false only: marshmallow would also take 0, 1, "yes"..."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is not bool:
            raise self.make_error("invalid")
        return value


URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"


def WebhookUrl(**kwargs):
    """An http or https URL: a host name or address, an optional port and
    path (no user, query or fragment), checked by the pattern it publishes."""
    return fields.String(validate=[validate.Length(max=2000), Pattern(
        URL_PATTERN, error="Not an http or https URL (scheme://host[:port][/path]).")],
        metadata={"format": "uri", "description": "http or https only."}, **kwargs)


class WebhookSchema(Representation):
    id = fields.UUID(dump_only=True)
    url = WebhookUrl()
    types = fields.String(allow_none=True, validate=parse_types, metadata={
        "pattern": TYPES_PATTERN, "description": (
            "The event types delivered, as `type` on /api/events takes them (a comma list, "
            "`instance.*` for a family); null for every type.")})
    label = fields.String(allow_none=True, validate=parse_selectors, metadata={
        "pattern": SELECTORS, "description": (
            "Label selectors the event's instance must hold, as `label` on /api/events; "
            "null for every instance.")})
    description = Text(allow_none=True, validate=validate.Length(max=1000))
    active = JSONBoolean()
    created_at = Moment(dump_only=True)
    updated_at = Moment(dump_only=True)
    last_delivery_at = Moment(dump_only=True, allow_none=True)
    last_status = fields.Integer(dump_only=True, allow_none=True)
    last_error = fields.String(dump_only=True, allow_none=True, metadata={"description": (
        "Why the last attempt failed, from a fixed vocabulary: refused, timeout, tls, dns, "
        "blocked address, http 3xx, http 4xx, http 5xx, error.")})
    pending = fields.Integer(dump_only=True, metadata={
        "description": "Events waiting to be delivered (counted up to 10,000)."})
    failed = fields.Integer(dump_only=True, metadata={
        "description": "Events given up after 24 hours of failures."})

    EXAMPLE = {
        "id": "01a2506f-e042-7f0b-8175-dbb27dd1dcd1", "url": "https://hooks.example.com/x",
        "types": "instance.*", "label": "env=prod", "description": "pager", "active": True,
        "created_at": "2026-12-07T12:17:18.910123+00:00",
        "updated_at": "2026-12-07T12:17:18.910123+00:00",
        "last_delivery_at": None, "last_status": None, "last_error": None,
        "pending": 0, "failed": 0,
    }


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(dump_only=True, metadata={"description": (
        "whsec_ and the base64 key that signs deliveries: shown in this answer only.")})

    EXAMPLE = {**WebhookSchema.EXAMPLE, "secret": "whsec_6GGTeeLeImFY7fblI/nuPowxuMwKYZwS"}


class WebhookUpdateSchema(InputSchema, WebhookSchema):
    # 4.7: the server's fields of a webhook are ignored in a body, like id
    # and the timestamps, so a GET-edit-PATCH round trip works.
    SERVER_SET_HERE = frozenset(("secret", "last_delivery_at", "last_status", "last_error",
                                 "pending", "failed"))
    EXAMPLE = {"active": False}

    @pre_load
    def drop_delivery_state(self, data, **kwargs):
        if isinstance(data, dict) and not self.SERVER_SET_HERE.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in self.SERVER_SET_HERE}
        return data


class WebhookCreateSchema(WebhookUpdateSchema):
    REQUIRED = ("url",)
    DEFAULTS = {"types": None, "label": None, "description": None, "active": True}
    EXAMPLE = {"url": "https://hooks.example.com/x", "types": "instance.*",
               "label": "env=prod", "description": "pager"}


class SecretSchema(Schema):
    secret = fields.String(metadata={"description": "The new secret, shown once."})

    EXAMPLE = {"secret": "whsec_rsO4L5A/rS5nzv1AIc84U1ccExJNX5Jv"}


class WebhookQuerySchema(ListQuerySchema):
    pass
