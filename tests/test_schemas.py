"""The input schemas' own loop over their fields (schemas.InputSchema) loads
and refuses exactly what marshmallow's would."""
import pytest
from marshmallow import ValidationError

from conftest import SITE, USER
from schemas import (
    InstanceCreateSchema, InstanceUpdateSchema, LogBatchSchema, PlanCreateSchema,
    PlanUpdateSchema,
)

LOG = {"log_type": "agent_action", "message": "clicked", "details": {"x": [1, {"y": None}]}}
BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
BODIES = [
    (LogBatchSchema, LOG),
    (LogBatchSchema, {"log_type": "system", "message": "m", "level": "warn"}),
    (LogBatchSchema, [LOG, {"message": "no type"}, {**LOG, "colour": "red", "level": "loud"}]),
    (LogBatchSchema, {**LOG, "id": SITE, "created_at": "2026-01-01T00:00:00Z"}),
    (LogBatchSchema, {"log_type": None, "message": 5, "details": []}),
    (LogBatchSchema, {}),
    (InstanceCreateSchema, BOX),
    (InstanceCreateSchema, {**BOX, "agent_id": None, "environment_variables": {"1X": "v"}}),
    (InstanceCreateSchema, {**BOX, "site_id": "not a uuid", "status": "bogus", "x": 1}),
    (InstanceUpdateSchema, {}),
    (InstanceUpdateSchema, {"name": " ", "configuration": {"cpu": 2}}),
    (PlanCreateSchema, {"title": "t", "plan_type": "task", "priority": 2**31}),
    (PlanUpdateSchema, {"status": "completed", "parent_id": None}),
]


def load(schema, body, **kwargs):
    try:
        return "loaded", schema.load(body, **kwargs)
    except ValidationError as error:
        return "refused", error.messages


@pytest.mark.parametrize("schema_class, body", BODIES)
def test_input_schemas_load_as_marshmallow_does(schema_class, body):
    schema = schema_class()
    # An empty `partial` takes marshmallow's own loop and changes nothing else.
    assert load(schema, body) == load(schema, body, partial=())
