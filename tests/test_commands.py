"""The command line's own tools (issue 22 items 3 and 7): `instance-api
--help` names every command with a line each, and `instance-api openapi`
writes the document from the code alone, whatever the environment holds,
touching no database."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import server
from conftest import POSTGRES_URL, ROOT, clean_environment, database_for

SCRIPT = Path(sys.executable).parent / "instance-api"


def run(*args, env=None, cwd=None):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**clean_environment(), **(env or {})})


def test_help_lists_every_command_with_one_line_each():
    done = run("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert set(server.COMMANDS) >= {"serve", "openapi", "backup", "tail"}
    for name in server.COMMANDS:
        described = [line for line in lines
                     if re.match(rf"  {name}\b\S*( [A-Za-z_\[\]-]+)? +\w.{{15,}}$", line)]
        assert len(described) == 1, (name, done.stdout)
    for flag in ("--host", "--port", "--db", "--workers"):
        assert flag in done.stdout


@pytest.mark.parametrize("command", ["openapi", "backup", "tail", "purge", "mcp"])
def test_each_command_has_its_own_help(command):
    done = run(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: instance-api {command}")


@pytest.fixture
def plain_document(tmp_path):
    """What `instance-api openapi` writes with no INSTANCES_* variable set."""
    done = run("openapi", str(tmp_path / "plain.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "plain.json").read_text()


def test_openapi_writes_the_committed_document_to_standard_output(plain_document, tmp_path):
    done = run("openapi", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == plain_document
    assert json.loads(plain_document) == json.loads((ROOT / "openapi.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["plain.json"]   # no instances.db made


def tables_in(settings):
    """The tables of a test database (database_for's settings), without
    creating it: a SQLite file's, or a PostgreSQL schema's."""
    if "DATABASE_URL" not in settings:
        path = Path(settings["DATABASE"])
        if not path.exists():
            return None
        import sqlite3
        with sqlite3.connect(path) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    import psycopg
    schema = re.search(r"search_path%3D(\w+)", settings["DATABASE_URL"]).group(1)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))]


@pytest.mark.parametrize("url", ["unreachable", "test database"])
def test_openapi_ignores_the_environments_tokens_database_and_settings(
        plain_document, tmp_path, url):
    settings = database_for(tmp_path / "target.db")
    before = tables_in(settings)
    database_url = ("postgresql://nobody@127.0.0.1:9/none" if url == "unreachable" else
                    settings.get("DATABASE_URL", f"sqlite:///{settings.get('DATABASE')}"))
    env = {"INSTANCES_API_TOKENS": "tok-one", "INSTANCES_DATABASE_URL": database_url,
           "INSTANCES_DATABASE": str(tmp_path / "other.db"),
           "INSTANCES_MAX_BODY_BYTES": "10", "INSTANCES_PORT": "not a port",
           "INSTANCES_API_TITLE": "Something else"}
    done = run("openapi", str(tmp_path / "doc.json"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "doc.json").read_text() == plain_document
    assert done.stderr == ""
    # No database was created, connected to or migrated.
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "instances.db").exists()
    assert tables_in(settings) == before


@pytest.mark.parametrize("where", ["missing/doc.json", "."])
def test_openapi_that_cannot_write_exits_non_zero_with_a_message(tmp_path, where):
    done = run("openapi", str(tmp_path / where), cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.startswith("Cannot write the OpenAPI document: "), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
