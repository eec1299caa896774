"""A list writes each row as GET by id writes it. On SQLite a list page's JSON
is written by SQLite from the output schema's members (storage.reads.Written);
a single row, and every row on PostgreSQL, is dumped by the schema itself.
Both must give the same values, whatever text the rows hold."""
import json

import pytest

from schemas import InstanceSchema, LogSchema, PlanSchema

# Text that JSON must escape, and text it must not change.
AWKWARD = 'quote " backslash \\ newline \n tab \t bell \x07 unit \x1f del \x7f é 😀 \u2028 </x>'
OBJECT = {"z": [1, 2.5, -3, 2**62, None, True, False], "a": {"b": {"c": AWKWARD}}, "": ""}


def same_as_get(client, url, made):
    """The list at `url` holds each of `made`, as GET by id gives it."""
    listed = client.get(url)
    assert listed.status_code == 200
    assert listed.content_type == "application/json"
    body = json.loads(listed.data)
    by_id = {row["id"]: row for row in body}
    assert len(body) == len(made)
    for row in made:
        one = client.get(f"{url.split('?')[0]}/{row['id']}")
        assert one.status_code == 200
        assert by_id[row["id"]] == one.get_json() == row
        assert list(by_id[row["id"]]) == list(one.get_json())   # the members' order too
    return body


def test_instances_list_as_get_gives_them(client, make_instance):
    made = [make_instance(name=AWKWARD, configuration=OBJECT, labels={"env": "prod"},
                          environment_variables={"PATH": AWKWARD}),
            make_instance(agent_id="0b7a4e1c-9d2f-4c3e-8a5b-6f7d8e9a0b1c")]
    same_as_get(client, "/api/instances", made)


def test_logs_list_as_get_gives_them(client, instance, make_log):
    made = [make_log(message=AWKWARD, details=OBJECT, level="error"), make_log()]
    same_as_get(client, f"/api/instances/{instance['id']}/logs", made)


def test_plans_list_as_get_gives_them(client, instance, make_plan):
    parent = make_plan(description=AWKWARD, instructions=None, priority=-(2**31))
    made = [parent, make_plan(parent_id=parent["id"], priority=2**31 - 1, status="in_progress")]
    same_as_get(client, f"/api/instances/{instance['id']}/plans", made)


def test_an_empty_page_is_an_empty_array(client, instance):
    resp = client.get(f"/api/instances/{instance['id']}/logs")
    assert resp.status_code == 200 and resp.data == b"[]"
    assert resp.headers["X-Total-Count"] == "0"


def test_a_cursor_page_links_after_its_last_row(client, instance, make_log):
    first, *rest = [make_log(message=f"m{n}") for n in range(4)]
    resp = client.get(f"/api/instances/{instance['id']}/logs?after={first['id']}&limit=2")
    assert [log["message"] for log in resp.get_json()] == ["m1", "m2"]
    assert f"after={rest[1]['id']}" in resp.headers["Link"]


@pytest.mark.parametrize("schema", [InstanceSchema, LogSchema, PlanSchema])
def test_every_output_schema_can_be_written_by_the_storage_layer(schema):
    # A field that changed its value on the way out would make wire() None,
    # and the lists would fall back to dumping dicts: slower, not wrong.
    assert [key for key, _ in schema.wire()] == list(schema().dump_fields)
