"""`instance-api mcp` driven by the MCP SDK's own stdio client against a real
server: the tools and their input schemas, a call of each, and errors (a bad
argument, an API refusal) as tool errors naming the field."""
import json
import sys

import anyio
import pytest

from conftest import ROOT, SITE, USER, clean_environment

mcp = pytest.importorskip("mcp", reason="the `mcp` extra (pip install .[mcp])")

TOOLS = {"list_instances", "get_instance", "create_instance", "set_status", "heartbeat",
         "append_logs", "read_logs", "get_plan_tree", "create_plan", "update_plan"}


def session(url, *extra, env=None):
    params = mcp.StdioServerParameters(
        command=sys.executable, args=[str(ROOT / "server.py"), "mcp", "--url", url, *extra],
        env={**clean_environment(), **(env or {})})
    return mcp.Client(params, read_timeout_seconds=30)


def drive(url, script, *extra, env=None):
    """Run `script(client)` (async) against a fresh `instance-api mcp`."""
    async def main():
        async with session(url, *extra, env=env) as client:
            return await script(client)
    return anyio.run(main)


def result(answer):
    assert not answer.is_error, answer.content[0].text
    return json.loads(answer.content[0].text)


def error_text(answer):
    assert answer.is_error
    return answer.content[0].text


def test_tools_and_their_schemas(server):
    async def script(client):
        return (await client.list_tools()).tools
    tools = {tool.name: tool for tool in drive(server.url, script)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object"
    status = tools["set_status"].input_schema["properties"]["status"]
    assert status["enum"][:3] == ["pending", "starting", "running"] and status["description"]
    assert tools["create_instance"].input_schema["required"] == ["site_id", "user_id", "name"]
    logs = tools["append_logs"].input_schema
    assert logs["properties"]["logs"]["maxItems"] == 1000
    assert "warn" in json.dumps(logs["$defs"])


def test_each_tool_against_a_real_server(server):
    async def script(client):
        call = client.call_tool
        box = result(await call("create_instance", {
            "site_id": SITE, "user_id": USER, "name": "agent box", "instance_type": "ubuntu",
            "labels": {"team": "qa"}}))
        assert box["status"] == "pending" and box["instance_type"] == "ubuntu"
        listed = result(await call("list_instances", {"labels": "team=qa",
                                                      "status": ["pending"]}))
        assert listed["total"] == 1 and listed["instances"][0]["id"] == box["id"]
        assert result(await call("get_instance", {"instance_id": box["id"]}))["name"] == (
            "agent box")
        running = result(await call("set_status", {"instance_id": box["id"],
                                                   "status": "running"}))
        assert running["status"] == "running"

        goal = result(await call("create_plan", {"instance_id": box["id"],
                                                 "title": "Book a flight",
                                                 "plan_type": "objective", "priority": 3}))
        task = result(await call("create_plan", {"instance_id": box["id"], "title": "Search",
                                                 "parent_id": goal["id"]}))
        done = result(await call("update_plan", {"instance_id": box["id"],
                                                 "plan_id": task["id"], "status": "completed"}))
        assert done["status"] == "completed" and done["completed_at"]
        tree = result(await call("get_plan_tree", {"instance_id": box["id"]}))["plans"]
        assert [p["id"] for p in tree] == [goal["id"]]
        assert [p["id"] for p in tree[0]["children"]] == [task["id"]]

        stored = result(await call("append_logs", {"instance_id": box["id"], "logs": [
            {"message": "opened the site"},
            {"message": "no seats", "level": "error", "log_type": "search",
             "details": {"tries": 2}}]}))
        assert len(stored["ids"]) == 2
        recent = result(await call("read_logs", {"instance_id": box["id"], "limit": 5}))
        assert [log["message"] for log in recent["logs"]] == ["opened the site", "no seats"]
        errors = result(await call("read_logs", {"instance_id": box["id"],
                                                 "min_level": "error"}))
        assert [log["details"] for log in errors["logs"]] == [{"tries": 2}]

        beat = await call("heartbeat", {"instance_id": box["id"]})
        return beat
    beat = drive(server.url, script)
    assert not beat.is_error, error_text(beat)


def test_errors_name_the_field(server):
    async def script(client):
        call = client.call_tool
        bad_enum = await call("set_status", {"instance_id": SITE, "status": "exploded"})
        missing = await call("create_instance", {"site_id": SITE, "name": "x"})
        refused = await call("create_instance", {"site_id": "not-a-uuid", "user_id": USER,
                                                 "name": "x"})
        box = result(await call("create_instance", {"site_id": SITE, "user_id": USER,
                                                    "name": "y"}))
        bad_parent = await call("create_plan", {"instance_id": box["id"], "title": "t",
                                                "parent_id": SITE})
        unknown = await call("get_instance", {"instance_id": SITE})
        return bad_enum, missing, refused, bad_parent, unknown
    bad_enum, missing, refused, bad_parent, unknown = drive(server.url, script)
    assert "status" in error_text(bad_enum) and "running" in error_text(bad_enum)
    assert "user_id" in error_text(missing)
    assert "422" in error_text(refused) and "site_id" in error_text(refused)
    assert "422" in error_text(bad_parent) and "parent_id" in error_text(bad_parent)
    assert "404" in error_text(unknown)


def test_a_token_file(start_server, tmp_path):
    server = start_server(env={"INSTANCES_API_TOKENS": "sesame"})
    token = tmp_path / "token"
    token.write_text("sesame\n")

    async def script(client):
        return await client.call_tool("list_instances", {})
    assert result(drive(server.url, script, "--token-file", str(token)))["total"] == 0
    assert "401" in error_text(drive(server.url, script))
