"""A client generated from the OpenAPI document works: openapi-python-client,
the most used Python generator, reads the document the server serves with
no warning, writes a function for every operation and a model for every
schema, and that client creates, reads and updates an instance, appends
and lists its logs and builds a plan tree against a real server.

The generated package lives in tmp_path and is importable only during the
test that uses it."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SITE, USER, Server, call, clean_environment

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
# Not instance_api_client: that is the project's own client.
PACKAGE = "generated_instance_api"
# A fixed package name, and no post hooks: those run ruff on the result,
# which costs time and needs ruff on PATH, and change nothing it does.
CONFIG = f"package_name_override: {PACKAGE}\npost_hooks: []\n"


def snake(name):
    """getInstanceLogById -> get_instance_log_by_id, as the generator names modules."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: the client is generated once, from it."""
    srv = Server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def generated(server, tmp_path_factory):
    """(the document, the generator's output, the folder of the package)."""
    tmp_path = tmp_path_factory.mktemp("generated")
    answer = call(server.url, "GET", "/api/openapi.json")
    assert answer.status_code == 200
    document = tmp_path / "openapi.json"
    document.write_bytes(answer.get_data())
    config = tmp_path / "generator.yaml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--config", str(config),
         "--output-path", str(tmp_path / "client")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_environment())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return answer.get_json(), output, tmp_path / "client"


@pytest.fixture
def client_package(generated):
    """The generated package, imported from tmp_path; forgotten afterwards
    (sys.path and sys.modules as they were)."""
    *_, folder = generated
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules
                     if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_the_generator_reads_the_whole_document_without_a_warning(generated):
    document, output, folder = generated
    lines = [line for line in output.splitlines()
             if re.search(r"warning|will not be generated|unable to|could not", line, re.I)]
    assert not lines, output
    package = folder / PACKAGE
    operations = {operation["operationId"] for methods in document["paths"].values()
                  for method, operation in methods.items() if method != "parameters"}
    modules = {path.stem for path in (package / "api").rglob("*.py")} - {"__init__"}
    assert modules == {snake(name) for name in operations}
    models = {path.stem for path in (package / "models").glob("*.py")}
    assert {snake(name) for name in document["components"]["schemas"]} <= models
    # The bodies that hold any JSON are models too (additional properties).
    assert {"instance_create_configuration", "log_create_details"} <= models


def operation(group, name):
    """The generated module of one operation, e.g. post_instance."""
    return importlib.import_module(f"{PACKAGE}.api.{group}.{name}")


def test_the_generated_client_runs_the_whole_flow(client_package, server):
    models = importlib.import_module(f"{PACKAGE}.models")
    post_instance = operation("instances", "post_instances")
    get_instance = operation("instances", "get_instance_by_id")
    patch_instance = operation("instances", "patch_instance_by_id")
    post_logs, get_logs = operation("logs", "post_instance_logs"), operation(
        "logs", "get_instance_logs")
    post_plan, get_plans = operation("plans", "post_instance_plans"), operation(
        "plans", "get_instance_plans")
    patch_plan = operation("plans", "patch_instance_plan_by_id")
    configuration = {"cpu": 2, "disks": [{"size_gb": 20, "tags": ["root", None]}],
                     "gpu": None, "big": 2**63}

    with client_package.Client(base_url=server.url, raise_on_unexpected_status=True) as client:
        created = post_instance.sync_detailed(client=client, body=models.InstanceCreate(
            site_id=SITE, user_id=USER, name="generated-1",
            instance_type=models.InstanceCreateInstanceType.UBUNTU,
            configuration=models.InstanceCreateConfiguration.from_dict(configuration),
            environment_variables=models.InstanceCreateEnvironmentVariables.from_dict(
                {"DISPLAY": ":0"}),
            labels=models.InstanceCreateLabels.from_dict({"env": "test"})))
        assert created.status_code == 201, created.content
        instance = created.parsed
        assert isinstance(instance, models.Instance)
        assert created.headers["Location"].endswith(f"/api/instances/{instance.id}")
        assert instance.configuration.to_dict() == configuration
        assert instance.status == models.InstanceStatus.PENDING

        read = get_instance.sync_detailed(instance.id, client=client)
        assert read.status_code == 200
        assert read.parsed.to_dict() == instance.to_dict()

        updated = patch_instance.sync_detailed(
            instance.id, client=client, if_match=read.headers["ETag"],
            body=models.InstanceUpdate(status=models.InstanceUpdateStatus.RUNNING))
        assert updated.status_code == 200, updated.content
        assert updated.parsed.status == models.InstanceStatus.RUNNING
        assert updated.parsed.name == "generated-1"

        details = {"app": "gnome-terminal", "window": {"x": 0, "y": 1.5}}
        logged = post_logs.sync_detailed(instance.id, client=client, body=[
            models.LogCreate(log_type="agent_action", message="Opened the terminal",
                             level=models.LogCreateLevel.INFO,
                             details=models.LogCreateDetails.from_dict(details)),
            models.LogCreate(log_type="agent_action", message="Typed ls")])
        assert logged.status_code == 201, logged.content
        listed = get_logs.sync_detailed(instance.id, client=client)
        assert listed.status_code == 200
        assert [log.message for log in listed.parsed] == ["Typed ls", "Opened the terminal"]
        assert listed.parsed[1].details.to_dict() == details
        assert listed.headers["X-Total-Count"] == "2"

        root = post_plan.sync_detailed(instance.id, client=client, body=(
            models.PlanCreate(title="Set up", plan_type="goal")))
        assert root.status_code == 201, root.content
        child = post_plan.sync_detailed(instance.id, client=client, body=(
            models.PlanCreate(title="apt-get update", plan_type="task",
                              parent_id=root.parsed.id)))
        assert child.status_code == 201, child.content
        assert child.parsed.parent_id == root.parsed.id
        done = patch_plan.sync_detailed(
            instance.id, child.parsed.id, client=client,
            body=models.PlanUpdate(status=models.PlanUpdateStatus.COMPLETED))
        assert done.status_code == 200, done.content
        assert done.parsed.completed_at
        tree = get_plans.sync_detailed(instance.id, client=client)
        assert {(plan.title, plan.status) for plan in tree.parsed} == {
            ("Set up", models.PlanStatus.PENDING),
            ("apt-get update", models.PlanStatus.COMPLETED)}

    # What the server keeps, read without the generated client.
    stored = call(server.url, "GET", f"/api/instances/{instance.id}").get_json()
    assert stored["status"] == "running" and stored["configuration"] == configuration
    stored_logs = call(server.url, "GET", f"/api/instances/{instance.id}/logs").get_json()
    assert [log["details"] for log in stored_logs] == [{}, details]
