"""The shapes the API answers with, as TypedDicts: what a client reads.

They mirror the component schemas of the OpenAPI document (openapi.json,
`instance-api openapi`); tests/test_client.py compares their keys with the
document's properties so that the two stay in step. Fields the server adds
for CONTRACT Part 4 (activity and deadlines, the fleet feeds, webhooks) are
`NotRequired`: a server from before them answers without them.
"""
from typing import Any, Literal, NotRequired, Optional, TypedDict

InstanceType = Literal["ubuntu", "browser", "windows"]
InstanceStatus = Literal["pending", "starting", "running", "paused", "stopping", "stopped",
                         "terminated", "error"]
Level = Literal["debug", "info", "warn", "error", "fatal"]
PlanStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
EventType = Literal["instance.created", "instance.updated", "instance.deleted",
                    "plan.created", "plan.updated", "plan.deleted"]

LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error", "fatal")


class Instance(TypedDict):
    id: str
    site_id: str
    user_id: str
    name: str
    instance_type: InstanceType
    status: InstanceStatus
    agent_id: Optional[str]
    configuration: dict[str, Any]
    environment_variables: dict[str, str]
    labels: dict[str, str]
    created_at: str
    updated_at: str
    # CONTRACT 4.1
    last_activity_at: NotRequired[str]
    idle_timeout_s: NotRequired[Optional[int]]
    expires_at: NotRequired[Optional[str]]
    status_reason: NotRequired[Optional[str]]


class Log(TypedDict):
    id: str
    instance_id: str
    log_type: str
    level: Level
    message: str
    details: dict[str, Any]
    created_at: str


class LogEntry(TypedDict):
    """One log to append (the body of POST .../logs, alone or in a batch)."""
    log_type: str
    message: str
    level: NotRequired[Level]
    details: NotRequired[dict[str, Any]]


class Plan(TypedDict):
    id: str
    instance_id: str
    title: str
    description: Optional[str]
    plan_type: str
    status: PlanStatus
    priority: int
    instructions: Optional[str]
    parent_id: Optional[str]
    started_at: Optional[str]
    completed_at: Optional[str]
    created_at: str
    updated_at: str


class PlanNode(Plan):
    """A plan of Client.plan_tree(): the plan and its sub-plans."""
    children: list["PlanNode"]


class Counts(TypedDict):
    total: int
    by: dict[str, dict[str, int]]


class Event(TypedDict):
    """CONTRACT 4.4: one change of the fleet."""
    id: str
    type: EventType
    at: str
    instance_id: Optional[str]
    plan_id: Optional[str]
    data: Optional[dict[str, Any]]


class Webhook(TypedDict):
    """CONTRACT 4.4: a receiver of events. `secret` only in the answers of
    create and rotate-secret."""
    id: str
    url: str
    types: Optional[str]        # a comma list as /api/events takes it; None: every type
    label: Optional[str]
    description: Optional[str]
    active: bool
    created_at: str
    updated_at: str
    last_delivery_at: Optional[str]
    last_status: Optional[int]
    last_error: Optional[str]
    pending: int
    failed: NotRequired[int]
    secret: NotRequired[str]


class Problem(TypedDict):
    """RFC 9457 problem details: every error answer (CONTRACT 1.5)."""
    type: str
    title: str
    status: int
    detail: str
    errors: NotRequired[dict[str, Any]]
    request_id: NotRequired[str]
    # A heartbeat's 409 (CONTRACT 4.7): how the instance ended.
    instance_status: NotRequired[str]
    status_reason: NotRequired[Optional[str]]


# The document's component schema each shape mirrors (tests/test_client.py).
SCHEMAS: dict[str, type] = {
    "Instance": Instance, "Log": Log, "Plan": Plan, "Counts": Counts, "Event": Event,
    "Webhook": Webhook, "Problem": Problem,
}
