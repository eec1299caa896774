"""Every input rule and output shape of the API (CONTRACT 1.2), by resource.

Shapes per resource: `<Noun>Schema` declares every field once, with its rules,
and is the output; `<Noun>UpdateSchema` loads its writable fields, all optional
and without defaults (so an update cannot reset a field nobody sent);
`<Noun>CreateSchema` adds what create requires and the defaults, side by side
as in the contract's tables; `<Noun>QuerySchema` is the list query.

A schema's own `EXAMPLE` is published with it in the OpenAPI document; the
tests check that each one passes its schema.
"""
import orjson
from marshmallow import (
    RAISE, Schema, ValidationError, fields, missing, pre_load, validate, validates_schema,
)

from labels import KEY, LabelSelectors, Labels, is_key
from models import (
    INSTANCE_STATUSES, INSTANCE_TYPES, LOG_LEVELS, MAX_ANCESTORS, PLAN_STATUSES,
)
from schema_fields import (
    Deadline, Enum, EnumList, JSONObject, Moment, Pattern, QueryInteger, Seconds, Slug, Sort, Text,
    Timestamp, WholeNumber, not_blank,
)
from storage.reads import Written

ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"
INT32 = validate.Range(-(2**31), 2**31 - 1)

# Fields the server sets. They are ignored when a client sends them back, so a
# GET-edit-PUT round trip works (CONTRACT 1.3, 1.6).
SERVER_SET = frozenset(("id", "instance_id", "created_at", "updated_at",
                        "started_at", "completed_at", "last_activity_at"))
# The longest idle timeout (CONTRACT 4.1): 30 days.
IDLE_TIMEOUT_MAX = 30 * 24 * 3600
BATCH_MAX = 1000
# The longest a log list may wait for a new log (CONTRACT 3.3), in seconds.
WAIT_MAX = 30

# For a field whose `_serialize` returns a value of this type as it is, the
# value is taken without the call: the same output, and most of a read's
# values are such (ids and timestamps as text, stored JSON objects), 550 of
# them in a page of 50 instances.
WRITTEN_AS_IS = {fields.String._serialize: str, fields.UUID._serialize: str,
                 Moment._serialize: str, JSONObject._serialize: orjson.Fragment}


class Representation(Schema):
    """Base of the resource schemas. What they dump is mostly a dict of the
    row's values (storage.reads.representations, BaseModel.add); each field then
    formats the value under its name with its own `_serialize` (unless it
    would write the value as it is: WRITTEN_AS_IS), without marshmallow's
    per-field lookup chain (Field.serialize, get_value, the schema's
    accessor), which cost more than the formatting: four calls for each of
    the 350 values of a page of 50 logs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._writers = [(field.data_key or name, field.attribute or name, field._serialize,
                          WRITTEN_AS_IS.get(type(field)._serialize))
                         for name, field in self.dump_fields.items()]

    @classmethod
    def wire(cls):
        """The (key, column) of each member this schema writes, in order, when
        every one is the stored value as it is (WRITTEN_AS_IS, or an integer):
        the storage layer can then write the rows itself (storage.reads.
        Written). None when a field would change a value."""
        if "_wire" not in cls.__dict__:
            members = cls().dump_fields.items()
            as_is = all(type(field)._serialize in WRITTEN_AS_IS
                        or isinstance(field, fields.Integer) for _, field in members)
            cls._wire = tuple((field.data_key or name, field.attribute or name)
                              for name, field in members) if as_is else None
        return cls._wire

    def _serialize(self, obj, *, many=False):
        if type(obj) is Written:
            return orjson.Fragment(obj.text)
        if many and obj is not None:
            return [self._serialize(item) for item in obj]
        if type(obj) is dict:
            try:
                return {key: value if type(value := obj[attr]) is kept
                        else write(value, attr, obj)
                        for key, attr, write, kept in self._writers}
            except KeyError:
                pass  # a field without a value is left out, as marshmallow does
        return super()._serialize(obj)


class InputSchema(Schema):
    """Base of request bodies: unknown keys raise, server-set keys are dropped
    before validation (dump_only fields would otherwise be unknown keys)."""

    # Filled by create schemas: fields that must be present, and the values
    # of absent optional fields (callables are called per load).
    REQUIRED = ()
    DEFAULTS = {}

    def on_bind_field(self, field_name, field_obj):
        if field_name in self.REQUIRED:
            field_obj.required = True
        if field_name in self.DEFAULTS:
            field_obj.load_default = self.DEFAULTS[field_name]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._readers = [(field.data_key or name, field.attribute or name, field)
                         for name, field in self.load_fields.items()]
        self._keys = frozenset(key for key, _, _ in self._readers)

    @pre_load
    def drop_server_set(self, data, **kwargs):
        if isinstance(data, dict) and not SERVER_SET.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in SERVER_SET}
        return data

    def _deserialize(self, data, *, error_store, many=False, partial=None, unknown=RAISE,
                     index=None):
        """marshmallow's loop over the fields for the one case the API has (a
        dict, every field, unknown keys refused), without what it builds per
        field for the others: a closure, keyword dicts, the partial checks,
        and the set of field names once per object. Each field still loads
        its value (`Field.deserialize`: required, null, default, type,
        validators). A batch of 1,000 logs is 4,000 such values."""
        if many or partial is not None or unknown != RAISE or type(data) is not dict:
            return super()._deserialize(data, error_store=error_store, many=many,
                                        partial=partial, unknown=unknown, index=index)
        index = index if self.opts.index_errors else None
        loaded = {}
        for key, attr, field in self._readers:
            try:
                value = field.deserialize(data.get(key, missing), key, data)
            except ValidationError as error:
                error_store.store_error(error.messages, key, index=index)
                value = error.valid_data or missing   # as marshmallow keeps it
            if value is not missing:
                loaded[attr] = value
        if not self._keys.issuperset(data):
            for key in data.keys() - self._keys:
                error_store.store_error([self.error_messages["unknown"]], key, index)
        return loaded


class ProblemSchema(Schema):
    """RFC 9457 problem details: the body of every error (CONTRACT 1.5)."""
    type = fields.String(metadata={
        "description": "about:blank (the status says it all), or "
                       "/api/problems/query-timeout for a read stopped by the read time "
                       "limit (do not retry it as it is: narrow it)."})
    title = fields.String(metadata={"description": "The HTTP reason phrase."})
    status = fields.Integer(metadata={"description": "The HTTP status code."})
    detail = fields.String(metadata={"description": "What went wrong, for a person."})
    errors = fields.Dict(
        keys=fields.String(),
        metadata={"description": "Validation errors: by where they came from (json, query, "
                                 "headers), then by field, or by entry index in a batch."})
    request_id = fields.String(
        metadata={"description": "On a 500: the id under which the fault was logged."})
    # 4.7: a heartbeat for an ended instance says how it ended.
    instance_status = fields.String(
        metadata={"description": "On a heartbeat's 409: the status the instance ended with."})
    status_reason = fields.String(
        allow_none=True,
        metadata={"description": "On a heartbeat's 409: why it ended (null if no reason)."})

    EXAMPLE = {
        "type": "about:blank", "title": "Unprocessable Entity", "status": 422,
        "detail": "The request did not pass validation: json.name.",
        "errors": {"json": {"name": ["Must contain a non-whitespace character."]}},
    }


class ListQuerySchema(Schema):
    """Pagination shared by every list (CONTRACT 1.4)."""
    limit = QueryInteger(load_default=50, validate=validate.Range(0, 1000))
    offset = QueryInteger(load_default=0, validate=validate.Range(min=0))


class OneOrMany:
    """Mixin for the one body that may also be a JSON array (CONTRACT 2.4):
    an array of 1..BATCH_MAX entries loads and dumps as a list, and its
    errors are keyed by entry index."""

    ACCEPTS_ARRAY = True

    def load(self, data, *, many=None, **kwargs):
        if isinstance(data, list):
            if not 1 <= len(data) <= BATCH_MAX:
                raise ValidationError({"_schema": [
                    f"A batch holds 1 to {BATCH_MAX} entries; this one has {len(data)}."]})
            many = True
        return super().load(data, many=many, **kwargs)

    def dump(self, obj, *, many=None):
        return super().dump(obj, many=isinstance(obj, list) if many is None else many)


# -- instances ---------------------------------------------------------------

class InstanceSchema(Representation):
    id = fields.UUID(dump_only=True)
    site_id = fields.UUID()
    user_id = fields.UUID()
    name = Text(blank=False, validate=[validate.Length(1, 255), not_blank])
    instance_type = Enum(INSTANCE_TYPES)
    status = Enum(INSTANCE_STATUSES)
    agent_id = fields.UUID(allow_none=True)
    configuration = JSONObject()
    environment_variables = JSONObject(
        keys=fields.String(validate=Pattern(ENV_KEY, error="Variable names must match {regex}.")),
        values=Text())
    labels = Labels()
    idle_timeout_s = WholeNumber(
        allow_none=True, validate=validate.Range(1, IDLE_TIMEOUT_MAX), metadata={"description": (
            "Seconds without activity after which the service ends the instance (status "
            "`error`, status_reason `idle_timeout`) while it is active; null: never.")})
    expires_at = Deadline(allow_none=True, metadata={"description": (
        "When the service ends the instance (status `terminated`, status_reason `expired`), "
        "paused or active; null: never.")})
    status_reason = Text(allow_none=True, validate=validate.Length(0, 500), metadata={
        "description": "Why the instance has its status; a change of status without a "
                       "reason clears it."})
    created_at = Moment(dump_only=True)
    updated_at = Moment(dump_only=True)
    last_activity_at = Moment(dump_only=True, metadata={"description": (
        "The latest of: created, changed, a log or plan written, a heartbeat. Recorded at "
        "most once a second, so it may trail by up to a second.")})

    EXAMPLE = {
        "id": "01a2247d-a6d6-77b1-90e7-12fd84736332",
        "site_id": "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01",
        "user_id": "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
        "name": "ubuntu-dev-1", "instance_type": "ubuntu", "status": "running",
        "agent_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "configuration": {"cpu": 2, "memory_gb": 4},
        "environment_variables": {"DISPLAY": ":0"},
        "labels": {"env": "prod", "team": "web"},
        "idle_timeout_s": 900, "expires_at": "2026-11-29T23:29:04.214389+00:00",
        "status_reason": None,
        "created_at": "2026-11-28T23:29:04.214389+00:00",
        "updated_at": "2026-11-28T23:29:13.684695+00:00",
        "last_activity_at": "2026-11-28T23:31:40.008211+00:00",
    }


class InstanceUpdateSchema(InputSchema, InstanceSchema):
    EXAMPLE = {"status": "running", "agent_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}


class InstanceCreateSchema(InstanceUpdateSchema):
    REQUIRED = ("site_id", "user_id", "name")
    DEFAULTS = {
        "instance_type": "browser", "status": "pending", "agent_id": None,
        "configuration": dict, "environment_variables": dict, "labels": dict,
        "idle_timeout_s": None, "expires_at": None, "status_reason": None,
    }
    EXAMPLE = {
        "site_id": "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01",
        "user_id": "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
        "name": "ubuntu-dev-1", "instance_type": "ubuntu",
        "configuration": {"cpu": 2, "memory_gb": 4},
        "environment_variables": {"DISPLAY": ":0"}, "labels": {"env": "prod"},
    }


class InstanceFilterSchema(Schema):
    """The filters of the instance list, which its counts take too."""
    site_id = fields.UUID()
    user_id = fields.UUID()
    agent_id = fields.UUID()
    status = EnumList(INSTANCE_STATUSES)
    instance_type = EnumList(INSTANCE_TYPES)
    q = Text(validate=validate.Length(1, 255), metadata={
        "description": "A part of the name, in any letter case; `%` and `_` are plain "
                       "characters. Three characters or more are looked up in an index; "
                       "one or two read the instances in order."})
    label = LabelSelectors()
    idle_for = QueryInteger(validate=validate.Range(0, 2**31 - 1), metadata={
        "description": "Instances whose last activity is at least this many seconds old."})
    expires_before = Timestamp(metadata={
        "description": "Instances whose expires_at is before this time (RFC 3339 with a zone)."})


class InstanceQuerySchema(ListQuerySchema, InstanceFilterSchema):
    sort = Sort(("created_at", "updated_at", "name", "status", "last_activity_at"))


# What counts group by (CONTRACT 3.2): closed sets list every member, open
# fields the values present; `label:KEY` the values of one label.
COUNTED = {"status": INSTANCE_STATUSES, "instance_type": INSTANCE_TYPES,
           "site_id": None, "user_id": None, "agent_id": None}
MAX_COUNTED = 16


class CountedFields(fields.String):
    """`by=status,label:env`: loads as a tuple of distinct names, each one of
    COUNTED or `label:` and a label key."""

    def __init__(self, **kwargs):
        name = f"({'|'.join(COUNTED)}|label:{KEY[1:-1]})"
        description = (f"What to count by, a comma list of up to {MAX_COUNTED}: "
                       f"{', '.join(COUNTED)}, or label:KEY for the values of a label.")
        super().__init__(metadata={
            "pattern": f"^{name}(,{name}){{0,{MAX_COUNTED - 1}}}$", "description": description},
            **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        names = super()._deserialize(value, attr, data, **kwargs).split(",")
        if len(names) > MAX_COUNTED:
            raise ValidationError(f"Count by at most {MAX_COUNTED} fields at once.")
        bad = [name for name in names if name not in COUNTED
               and not (name.startswith("label:") and is_key(name[len("label:"):]))]
        if bad:
            raise ValidationError(
                f"Cannot count by {', '.join(map(repr, bad))}; use {', '.join(COUNTED)} or "
                "label:KEY (a label key).")
        return tuple(dict.fromkeys(names))


class InstanceCountsQuerySchema(InstanceFilterSchema):
    by = CountedFields()


class CountsSchema(Schema):
    total = fields.Integer(metadata={"description": "How many instances match the filters."})
    by = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Integer()),
        metadata={"description": "For each field of `by`, instances per value: a closed "
                                 "set's every member in its order, zeros included; an open "
                                 "field's values present, most frequent first (ties by "
                                 "value), at most 100, without instances that have none."})

    EXAMPLE = {"total": 123, "by": {
        "status": {"pending": 3, "starting": 0, "running": 80, "paused": 0, "stopping": 0,
                   "stopped": 30, "terminated": 8, "error": 2},
        "label:env": {"prod": 70, "staging": 41}}}


# -- logs --------------------------------------------------------------------

class LogSchema(Representation):
    id = fields.UUID(dump_only=True)
    instance_id = fields.UUID(dump_only=True)
    log_type = Slug()
    level = Enum(LOG_LEVELS)
    message = Text(validate=validate.Length(1, 65536))
    details = JSONObject()
    created_at = Moment(dump_only=True)

    EXAMPLE = {
        "id": "01a2247d-cbe7-719f-9f26-59e31504471a",
        "instance_id": "01a2247d-a6d6-77b1-90e7-12fd84736332",
        "log_type": "agent_action", "level": "info", "message": "Opened the terminal",
        "details": {"app": "gnome-terminal"},
        "created_at": "2026-11-28T23:29:13.703537+00:00",
    }


class LogCreateSchema(InputSchema, LogSchema):
    REQUIRED = ("log_type", "message")
    DEFAULTS = {"level": "info", "details": dict}
    EXAMPLE = {"log_type": "agent_action", "message": "Opened the terminal",
               "details": {"app": "gnome-terminal"}}


class LogBatchSchema(OneOrMany, LogCreateSchema):
    """One log as an object, or a batch of them as an array."""


class LogOneOrManySchema(OneOrMany, LogSchema):
    pass


class LogQuerySchema(ListQuerySchema):
    log_type = Slug()
    level = EnumList(LOG_LEVELS)
    min_level = Enum(LOG_LEVELS)
    since = Timestamp()
    until = Timestamp()
    after = fields.UUID(metadata={"description": (
        "The id of the last log you have: the list is then the logs committed after it, in "
        "the order they were committed (oldest first). Follow the next link, or send the "
        "last id you received, and you see every log once.")})
    wait = Seconds(validate=validate.Range(0, WAIT_MAX), metadata={"description": (
        f"With `after`: when no log matching the other filters follows the cursor, hold the "
        f"request up to this many seconds (0 to {WAIT_MAX}, decimals allowed) and answer "
        "with the new logs as soon as one is committed, by any process; at the deadline, "
        "answer `[]`. A deleted instance ends the wait with 404. A server already holding "
        "its most waiting requests (INSTANCES_MAX_WAITS) answers at once, as does one "
        "that is stopping.")})
    sort = Sort(("created_at", "level"))

    @validates_schema
    def after_has_its_own_order(self, data, **kwargs):
        if "after" in data and "sort" in data:
            raise ValidationError("A list with after is oldest first; leave out sort.", "sort")

    @validates_schema
    def wait_follows_a_cursor(self, data, **kwargs):
        # 3.3: a wait is for the logs after one you have.
        if "wait" in data and "after" not in data:
            raise ValidationError("wait needs after=<the id of the last log you have>.", "wait")
        if "wait" in data and data.get("limit") == 0:
            raise ValidationError("A page of limit=0 never has a log to wait for; "
                                  "send limit=1 or more.", "wait")


# -- plans -------------------------------------------------------------------

class PlanSchema(Representation):
    id = fields.UUID(dump_only=True)
    instance_id = fields.UUID(dump_only=True)
    title = Text(blank=False, validate=[validate.Length(1, 500), not_blank])
    description = Text(allow_none=True)
    plan_type = Slug()
    status = Enum(PLAN_STATUSES)
    priority = WholeNumber(validate=INT32)
    instructions = Text(allow_none=True)
    parent_id = fields.UUID(allow_none=True, metadata={"description": (
        f"Another plan of the same instance. Plans nest at most {MAX_ANCESTORS} levels: "
        f"a plan has at most {MAX_ANCESTORS} ancestors, and a plan is never its own "
        "ancestor; a parent that would break either rule is refused (422 on parent_id).")})
    started_at = Moment(dump_only=True, allow_none=True)
    completed_at = Moment(dump_only=True, allow_none=True)
    created_at = Moment(dump_only=True)
    updated_at = Moment(dump_only=True)

    EXAMPLE = {
        "id": "01a224b2-cac5-7354-9022-327cd49f890e",
        "instance_id": "01a2247d-a6d6-77b1-90e7-12fd84736332",
        "title": "Run apt-get update", "description": None, "plan_type": "task",
        "status": "completed", "priority": 0, "instructions": "As root.",
        "parent_id": "01a2247d-cc0e-7b6e-a1d8-99ba12e15778",
        "started_at": "2026-11-29T00:27:06.821071+00:00",
        "completed_at": "2026-11-29T00:27:36.881266+00:00",
        "created_at": "2026-11-29T00:27:06.821071+00:00",
        "updated_at": "2026-11-29T00:27:36.881266+00:00",
    }


class PlanUpdateSchema(InputSchema, PlanSchema):
    EXAMPLE = {"status": "completed"}


class PlanCreateSchema(PlanUpdateSchema):
    REQUIRED = ("title", "plan_type")
    DEFAULTS = {"description": None, "status": "pending", "priority": 0, "instructions": None,
                "parent_id": None}
    EXAMPLE = {"title": "Run apt-get update", "plan_type": "task", "instructions": "As root.",
               "parent_id": "01a2247d-cc0e-7b6e-a1d8-99ba12e15778"}


class PlanQuerySchema(ListQuerySchema):
    status = EnumList(PLAN_STATUSES)
    plan_type = Slug()
    parent_id = fields.UUID()
    sort = Sort(("created_at", "updated_at", "priority", "status", "title"))
