"""`q` through an index (CONTRACT 2.1): the trigram index of SQLite (FTS5)
and of PostgreSQL (pg_trgm) finds exactly the instances that the plain
test of every name finds: Unicode letter case folded, `%` and `_` plain,
the index kept through renames and deletes, backups and VACUUM; without
pg_trgm, the service starts and searches without it."""
import logging
import sqlite3
from urllib.parse import urlencode

import pytest

import migrations
import models
import search
from app import create_app
from conftest import POSTGRES_URL, close_connections, database_for
from storage.backup import backup
from storage.engines import fold

URL = "/api/instances"
NAMES = [
    "web-01", "WEB-02", "db-primary", "Straße 9", "STRASSE 10", "İstanbul", "istanbul",
    "ΣΊΣΥΦΟΣ", "σίσυφος", "100% done", "100 percent", "snake_case", "snakeXcase",
    'say "hi"', "tab\there", "🚀 rocket 🚀", "ＷＩＤＥ", "e\u0301cran", "écran", "a" * 255,
]
QUERIES = [
    "web", "WEB-0", "eb-", "-01", "primary", "strasse", "STRASSE", "straße", "ssE 1", "stanbul",
    "İst", "σίσυφος", "ΣΊΣ", "υφος", "0% d", "100", "_ca", "e_c", "%", "_", '"hi"', '"', "t\th",
    "🚀", "🚀 r", "ＷＩ", "wide", "e\u0301c", "écr", "cran", "a" * 3, "a" * 255, "a" * 256,
    "nothing", "xyz", "ab", "w", "\\", "*", "OR", "AND", "NEAR",
]


@pytest.fixture
def named(make_instance):
    return [make_instance(name=name) for name in NAMES]


def found(client, text, **query):
    resp = client.get(f"{URL}?{urlencode({'q': text, 'limit': 1000, **query})}")
    if len(text) > 255:
        assert resp.status_code == 422
        return None
    assert resp.status_code == 200, resp.get_json()
    names = [row["name"] for row in resp.get_json()]
    assert int(resp.headers["X-Total-Count"]) == len(names)
    return names


def contains(name, text):
    """What `q` meant before it had an index: the name contains the text,
    both folded as the engine folds them (engines.contains_folded): on
    SQLite Python's casefold, on PostgreSQL its lower() of the name."""
    if models.is_sqlite():
        return fold(text) in fold(name)
    with models.db.connection_context():
        return models.db.execute_sql("SELECT strpos(lower(%s), %s) > 0",
                                     (name, fold(text))).fetchone()[0]


@pytest.mark.parametrize("text", QUERIES)
def test_q_finds_exactly_the_names_that_contain_the_text(client, named, text):
    names = found(client, text)
    if names is not None:
        assert sorted(names) == sorted(name for name in NAMES if contains(name, text))


def test_the_index_follows_renames_and_deletes(client, named):
    web = next(row for row in named if row["name"] == "web-01")
    client.patch(f"{URL}/{web['id']}", json={"name": "renamed-01"})
    assert found(client, "web-01") == []
    assert found(client, "renamed") == ["renamed-01"]
    client.patch(f"{URL}/{web['id']}", json={"status": "running"})   # the name stays
    assert found(client, "renamed") == ["renamed-01"]
    client.delete(f"{URL}/{web['id']}")
    assert found(client, "renamed") == []
    assert found(client, "-01") == []


def test_q_combines_with_labels_filters_and_pages(client, make_instance):
    for n in range(12):
        make_instance(name=f"node-{n:02d}", status=("running", "paused")[n % 2],
                      labels={"env": "prod"} if n % 3 == 0 else {})
    names = found(client, "NODE", status="running", label="env=prod", sort="name")
    assert names == ["node-00", "node-06"]
    page = client.get(f"{URL}?{urlencode({'q': 'node-1', 'limit': 1, 'offset': 1})}")
    assert page.headers["X-Total-Count"] == "2"
    assert [row["name"] for row in page.get_json()] == ["node-10"]
    assert "q=node-1" in page.headers["Link"]


@pytest.mark.sqlite_only   # PostgreSQL's planner weighs its trigram index itself
def test_a_text_most_names_contain_reads_in_order_and_a_rare_one_through_the_index(
        client, make_instance):
    for n in range(30):
        make_instance(name=f"fleet-{n}" + ("-gpu" if n == 7 else ""))
    planned = dict(wanted=10, only_labels=False, narrowed=False, newest_first=True)
    rare = search.plan((), search.search_values("gpu"), **planned)
    common = search.plan((), search.search_values("fleet"), **planned)
    assert (rare.page, rare.count) == ("q", "q")
    assert common.page is None and common.count == "q"
    assert found(client, "gpu") == ["fleet-7-gpu"]
    assert len(found(client, "fleet")) == 30
    page = client.get(f"{URL}?q=fleet&limit=3")
    assert page.headers["X-Total-Count"] == "30"
    assert [row["name"] for row in page.get_json()] == ["fleet-29", "fleet-28", "fleet-27"]


# -- SQLite: the index keyed by rowid keeps its rows through VACUUM and backups ----

def search_index_agrees(path):
    """The trigram index of the file at `path` lists exactly the rowids
    whose names it was made of (read with the service's own connection)."""
    close_connections()
    database = create_app({"TESTING": True, "DATABASE": str(path)})
    try:
        client = database.test_client()
        for text in ("web", "straße", "ΣΊΣ", "100%", "🚀 r"):
            assert sorted(found(client, text)) == sorted(
                name for name in NAMES if contains(name, text)), text
        # Each row is found by its own whole name, at its own rowid.
        for rowid, name in models.db.execute_sql("SELECT rowid, name FROM instance"):
            phrase = '"' + name.casefold().replace('"', '""') + '"'
            listed = models.db.execute_sql("SELECT rowid FROM instance_search WHERE "
                                           "instance_search MATCH ?", (phrase,)).fetchall()
            assert (rowid,) in listed, name
    finally:
        close_connections()


@pytest.mark.sqlite_only
def test_vacuum_and_a_backup_keep_the_search_index_right(client, app, make_instance,
                                                         tmp_path):
    rows = [make_instance(name=name) for name in NAMES]
    # Deletes leave gaps in the rowids, which a VACUUM could close.
    for row in rows[::3]:
        client.delete(f"{URL}/{row['id']}")
    for row in rows[::3]:
        client.post(URL, json={k: row[k] for k in ("site_id", "user_id", "name")})
    path = tmp_path / "t.db"
    close_connections()
    conn = sqlite3.connect(path)
    conn.execute("VACUUM")
    conn.close()
    search_index_agrees(path)
    backup(path, tmp_path / "copy.db")
    search_index_agrees(tmp_path / "copy.db")


# -- PostgreSQL without pg_trgm ---------------------------------------------------

@pytest.mark.skipif(not POSTGRES_URL, reason="needs INSTANCES_TEST_DATABASE_URL")
def test_without_pg_trgm_the_service_starts_and_searches_every_row(tmp_path, monkeypatch,
                                                                   caplog):
    close_connections()
    settings = {"TESTING": True, **database_for(tmp_path / "no-trgm.db")}
    # As a role without the privilege to install it would be refused.
    monkeypatch.setattr(search, "TRIGRAM_EXTENSION", "CREATE EXTENSION pg_trgm_not_installable")
    with caplog.at_level(logging.WARNING, logger="instance_api"):
        app = create_app(settings)
    refused = [record.getMessage() for record in caplog.records
               if "pg_trgm" in record.getMessage()]
    assert len(refused) == 1 and "reads every row" in refused[0], refused
    try:
        client = app.test_client()
        for name in ("web-01", "db-primary", "WEB-02"):
            assert client.post(URL, json={"site_id": "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01",
                                          "user_id": "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
                                          "name": name}).status_code == 201
        assert sorted(found(client, "web")) == ["WEB-02", "web-01"]
        assert not search.has_trigram_index()
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
    finally:
        close_connections()
    # Once the extension can be had, the next start builds the index.
    monkeypatch.undo()
    app = create_app(settings)
    try:
        with models.db.connection_context():
            assert search.has_trigram_index()
        assert sorted(found(app.test_client(), "web")) == ["WEB-02", "web-01"]
    finally:
        close_connections()
