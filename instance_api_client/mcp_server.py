"""`instance-api mcp --url URL [--token-file F]`: the API as MCP tools over
stdio, so that an LLM agent records its own instance, plans and logs with no
glue code (CONTRACT 4.6). Built on the official MCP SDK (the optional extra
`mcp`: `pip install instance-api[mcp]`), over Client.

Each tool's input schema comes from its typed signature (closed sets as
Literal enums, each field described for the model). An ApiError comes back
as a tool error (is_error) with the problem's detail and the fields it names.

The SDK is imported in build_server() only: without the extra, this module
still imports, and the command says what to install (exit status 2).

Not here: the HTTP calls (client.py).
"""
import argparse
import json
import os
import sys
from typing import Annotated, Any, Optional

from .client import Client
from .transport import ApiError
from .types import InstanceStatus, InstanceType, Level, PlanStatus

INSTRUCTIONS = (
    "Records of remote machines (instances) driven by agents, with each instance's logs and "
    "plans. Typical use: create_instance (or list_instances to find yours), set_status "
    "'running', create_plan for the objective and its tasks (parent_id), append_logs as you "
    "act, update_plan as tasks progress, heartbeat while idle, and set_status 'stopped' (or "
    "'error' with a reason) at the end. Ids are UUIDs returned by these tools.")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="instance-api mcp",
        description="Serve the Instance Management API as MCP tools over standard input and "
                    "output, for an MCP client (an LLM agent's host) to start.")
    parser.add_argument("--url", default=os.environ.get("INSTANCES_URL", "http://127.0.0.1:8080"),
                        help="the API server (default $INSTANCES_URL or http://127.0.0.1:8080)")
    parser.add_argument("--token-file",
                        help="a file holding the API token, if the server needs one (default: "
                             "$INSTANCES_API_TOKEN)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url {args.url}: give http://HOST:PORT or https://HOST:PORT")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    token = os.environ.get("INSTANCES_API_TOKEN")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            print(f"instance-api mcp: --token-file: {exc}", file=sys.stderr)
            return 2
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        print("instance-api mcp: the MCP SDK is not installed; install the extra with "
              "`pip install 'instance-api[mcp]'`", file=sys.stderr)
        return 2
    with Client(args.url, token) as client:
        build_server(client).run("stdio")
    return 0


def tool_error(exc):
    """The ToolError text for an ApiError: status, detail, and the fields."""
    from mcp.server.mcpserver.exceptions import ToolError

    text = str(exc)
    if exc.errors:
        text += "\nerrors: " + json.dumps(exc.errors, ensure_ascii=False)
    return ToolError(text)


def build_server(client):
    """An MCPServer whose tools call `client`."""
    from mcp.server.mcpserver import MCPServer
    from pydantic import BaseModel, Field

    server = MCPServer("instance-api", instructions=INSTRUCTIONS)

    def call(method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except ApiError as exc:
            raise tool_error(exc) from exc

    def tool(fn):
        """Register fn as a tool, its docstring the description."""
        server.tool()(fn)
        return fn

    InstanceId = Annotated[str, Field(description="The instance's id (a UUID).")]
    PlanId = Annotated[str, Field(description="The plan's id (a UUID).")]
    Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]

    class LogInput(BaseModel):
        message: Annotated[str, Field(min_length=1, max_length=65536,
                                      description="What happened, in a sentence.")]
        level: Annotated[Level, Field(description="Severity.")] = "info"
        log_type: Annotated[Slug, Field(description="A category slug, e.g. agent_action, "
                                                    "system, error.")] = "agent_action"
        details: Annotated[Optional[dict[str, Any]],
                           Field(description="Any structured data (a JSON object).")] = None

    @tool
    def list_instances(
        status: Annotated[Optional[list[InstanceStatus]],
                          Field(description="Only these statuses.")] = None,
        instance_type: Annotated[Optional[list[InstanceType]],
                                 Field(description="Only these machine types.")] = None,
        site_id: Annotated[Optional[str], Field(description="Only this site (UUID).")] = None,
        user_id: Annotated[Optional[str], Field(description="Only this user (UUID).")] = None,
        agent_id: Annotated[Optional[str], Field(description="Only this agent (UUID).")] = None,
        q: Annotated[Optional[str], Field(description="Part of the name, any case.")] = None,
        labels: Annotated[Optional[str], Field(
            description="Label selectors, comma-separated, all must hold: key=value, "
                        "key!=value, key (has it), !key (lacks it).")] = None,
        limit: Annotated[int, Field(ge=0, le=1000, description="Instances per page.")] = 50,
        offset: Annotated[int, Field(ge=0, description="Instances to skip.")] = 0,
    ) -> dict[str, Any]:
        """List instances (machine records), newest first, with filters. Answers
        {"total", "instances": [...]}."""
        page = call(client.list_instances, status=status, instance_type=instance_type,
                    site_id=site_id, user_id=user_id, agent_id=agent_id, q=q, label=labels,
                    limit=limit, offset=offset)
        return {"total": page.total, "instances": list(page)}

    @tool
    def get_instance(instance_id: InstanceId) -> dict[str, Any]:
        """Read one instance: its fields, status, labels and configuration."""
        return dict(call(client.get_instance, instance_id))

    @tool
    def create_instance(
        site_id: Annotated[str, Field(description="The site it belongs to (UUID).")],
        user_id: Annotated[str, Field(description="The user it belongs to (UUID).")],
        name: Annotated[str, Field(min_length=1, max_length=255,
                                   description="A name for people to read.")],
        instance_type: Annotated[InstanceType, Field(description="The kind of machine.")]
        = "browser",
        agent_id: Annotated[Optional[str], Field(description="The agent driving it (UUID).")]
        = None,
        labels: Annotated[Optional[dict[str, str]], Field(
            description="Labels to find it by, e.g. {\"env\": \"prod\"}.")] = None,
        configuration: Annotated[Optional[dict[str, Any]],
                                 Field(description="Any configuration (a JSON object).")] = None,
    ) -> dict[str, Any]:
        """Create an instance record (status starts as pending). Answers the instance, with
        its id."""
        fields = {name: value for name, value in (
            ("agent_id", agent_id), ("labels", labels), ("configuration", configuration))
            if value is not None}
        return dict(call(client.create_instance, site_id=site_id, user_id=user_id, name=name,
                         instance_type=instance_type, **fields))

    @tool
    def set_status(
        instance_id: InstanceId,
        status: Annotated[InstanceStatus, Field(description="The new status.")],
        reason: Annotated[Optional[str], Field(
            max_length=500, description="Why, for people reading later (e.g. the error).")]
        = None,
    ) -> dict[str, Any]:
        """Change an instance's status, with an optional reason. Answers the instance."""
        return dict(call(client.set_status, instance_id, status, reason))

    @tool
    def heartbeat(instance_id: InstanceId) -> dict[str, Any]:
        """Say the instance is still in use, so an idle timeout does not end it."""
        call(client.heartbeat, instance_id)
        return {"ok": True}

    @tool
    def append_logs(
        instance_id: InstanceId,
        logs: Annotated[list[LogInput], Field(min_length=1, max_length=1000,
                                              description="One log or a batch, oldest first.")],
    ) -> dict[str, Any]:
        """Append logs to an instance's log: what the agent did or saw. All are stored or
        none. Answers the stored logs' ids."""
        entries = [log.model_dump(exclude_none=True) for log in logs]
        stored = call(client.append_logs, instance_id, entries)
        return {"ids": [log["id"] for log in stored]}

    @tool
    def read_logs(
        instance_id: InstanceId,
        limit: Annotated[int, Field(ge=1, le=1000, description="How many recent logs.")] = 20,
        min_level: Annotated[Optional[Level], Field(
            description="Only this level or more severe.")] = None,
        log_type: Annotated[Optional[Slug], Field(description="Only this category.")] = None,
    ) -> dict[str, Any]:
        """Read an instance's most recent logs, oldest first."""
        page = call(client.list_logs, instance_id, min_level=min_level, log_type=log_type,
                    limit=limit)
        return {"total": page.total, "logs": list(reversed(page))}

    @tool
    def get_plan_tree(instance_id: InstanceId) -> dict[str, Any]:
        """Read an instance's plans as a tree: objectives with their tasks in `children`,
        highest priority first."""
        return {"plans": call(client.plan_tree, instance_id)}

    @tool
    def create_plan(
        instance_id: InstanceId,
        title: Annotated[str, Field(min_length=1, max_length=500,
                                    description="What is to be done.")],
        plan_type: Annotated[Slug, Field(description="A category slug, e.g. objective, task.")]
        = "task",
        parent_id: Annotated[Optional[str], Field(
            description="The plan this one is part of (a plan id of the same instance).")]
        = None,
        status: Annotated[PlanStatus, Field(description="Its status.")] = "pending",
        priority: Annotated[int, Field(ge=-2147483648, le=2147483647,
                                       description="Higher is more important.")] = 0,
        description: Annotated[Optional[str], Field(description="More about it.")] = None,
        instructions: Annotated[Optional[str], Field(description="How to do it.")] = None,
    ) -> dict[str, Any]:
        """Create a plan (an objective, or a task under one via parent_id). Answers the
        plan, with its id."""
        fields = {name: value for name, value in (
            ("parent_id", parent_id), ("description", description),
            ("instructions", instructions)) if value is not None}
        return dict(call(client.create_plan, instance_id, title, plan_type=plan_type,
                         status=status, priority=priority, **fields))

    @tool
    def update_plan(
        instance_id: InstanceId,
        plan_id: PlanId,
        status: Annotated[Optional[PlanStatus], Field(description="The new status.")] = None,
        title: Annotated[Optional[str], Field(min_length=1, max_length=500,
                                              description="A new title.")] = None,
        priority: Annotated[Optional[int], Field(ge=-2147483648, le=2147483647,
                                                 description="A new priority.")] = None,
        description: Annotated[Optional[str], Field(description="A new description.")] = None,
        instructions: Annotated[Optional[str], Field(description="New instructions.")] = None,
        parent_id: Annotated[Optional[str], Field(description="A new parent plan id.")] = None,
    ) -> dict[str, Any]:
        """Change a plan: its status as work progresses (in_progress, completed, failed,
        cancelled), or other fields. Only the fields given change. Answers the plan."""
        fields = {name: value for name, value in (
            ("status", status), ("title", title), ("priority", priority),
            ("description", description), ("instructions", instructions),
            ("parent_id", parent_id)) if value is not None}
        return dict(call(client.update_plan, instance_id, plan_id, **fields))

    return server


if __name__ == "__main__":
    sys.exit(main())
