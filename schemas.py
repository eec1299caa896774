"""Every input rule and output shape of the API (CONTRACT 1.2), by resource.

Shapes per resource: `<Noun>Schema` declares every field once, with its rules,
and is the output; `<Noun>UpdateSchema` loads its writable fields, all optional
and without defaults (so an update cannot reset a field nobody sent);
`<Noun>CreateSchema` adds what create requires and the defaults, side by side
as in the contract's tables; `<Noun>QuerySchema` is the list query.
"""
from marshmallow import Schema, ValidationError, fields, pre_load, validate

from models import INSTANCE_STATUSES, INSTANCE_TYPES, LOG_LEVELS, PLAN_STATUSES

SLUG = r"^[a-z][a-z0-9_.-]{0,63}$"
ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"
INT32 = validate.Range(-(2**31), 2**31 - 1)

# Fields the server sets. They are ignored when a client sends them back, so a
# GET-edit-PUT round trip works (CONTRACT 1.3, 1.6).
SERVER_SET = frozenset(("id", "instance_id", "created_at", "updated_at"))


def not_blank(value):
    if not value.strip():
        raise ValidationError("Must contain a non-whitespace character.")


class Pattern(validate.Regexp):
    """Regexp that must match the whole value. Python's `$` also matches
    before a final newline, so "system\\n" would pass a plain Regexp; the
    pattern itself stays in the portable ^...$ form the API docs publish."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def Slug(**kwargs):
    return fields.String(
        validate=Pattern(SLUG, error="Must be a lower-case slug matching {regex}."), **kwargs)


def Enum(choices, **kwargs):
    return fields.String(validate=validate.OneOf(choices), **kwargs)


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

    @pre_load
    def drop_server_set(self, data, **kwargs):
        if isinstance(data, dict) and not SERVER_SET.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in SERVER_SET}
        return data


class ListQuerySchema(Schema):
    """Pagination shared by every list (CONTRACT 1.4)."""
    limit = fields.Integer(load_default=50, validate=validate.Range(0, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


# -- instances ---------------------------------------------------------------

class InstanceSchema(Schema):
    id = fields.UUID(dump_only=True)
    site_id = fields.UUID()
    user_id = fields.UUID()
    name = fields.String(validate=[validate.Length(1, 255), not_blank])
    instance_type = Enum(INSTANCE_TYPES)
    status = Enum(INSTANCE_STATUSES)
    agent_id = fields.UUID(allow_none=True)
    configuration = fields.Dict(keys=fields.String())
    environment_variables = fields.Dict(
        keys=fields.String(validate=Pattern(ENV_KEY, error="Variable names must match {regex}.")),
        values=fields.String())
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class InstanceUpdateSchema(InputSchema, InstanceSchema):
    pass


class InstanceCreateSchema(InstanceUpdateSchema):
    REQUIRED = ("site_id", "user_id", "name")
    DEFAULTS = {
        "instance_type": "browser", "status": "pending", "agent_id": None,
        "configuration": dict, "environment_variables": dict,
    }


class InstanceQuerySchema(ListQuerySchema):
    site_id = fields.UUID()
    status = Enum(INSTANCE_STATUSES)


# -- logs --------------------------------------------------------------------

class LogSchema(Schema):
    id = fields.UUID(dump_only=True)
    instance_id = fields.UUID(dump_only=True)
    log_type = Slug()
    level = Enum(LOG_LEVELS)
    message = fields.String(validate=validate.Length(1, 65536))
    details = fields.Dict(keys=fields.String())
    created_at = fields.DateTime(dump_only=True)


class LogCreateSchema(InputSchema, LogSchema):
    REQUIRED = ("log_type", "message")
    DEFAULTS = {"level": "info", "details": dict}


class LogQuerySchema(ListQuerySchema):
    log_type = Slug()
    level = Enum(LOG_LEVELS)


# -- plans -------------------------------------------------------------------

class PlanSchema(Schema):
    id = fields.UUID(dump_only=True)
    instance_id = fields.UUID(dump_only=True)
    title = fields.String(validate=[validate.Length(1, 500), not_blank])
    description = fields.String(allow_none=True)
    plan_type = Slug()
    status = Enum(PLAN_STATUSES)
    priority = fields.Integer(strict=True, validate=INT32)
    instructions = fields.String(allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class PlanUpdateSchema(InputSchema, PlanSchema):
    pass


class PlanCreateSchema(PlanUpdateSchema):
    REQUIRED = ("title", "plan_type")
    DEFAULTS = {"description": None, "status": "pending", "priority": 0, "instructions": None}


class PlanQuerySchema(ListQuerySchema):
    status = Enum(PLAN_STATUSES)
    plan_type = Slug()
