"""Labels (CONTRACT 3.1): the `labels` field and its rules, and the `label`
list filter, checked against the same selectors evaluated here in Python,
alone and combined with the other filters, sorts and pages, on whichever
engine the suite runs on."""
import itertools
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

import search
from conftest import SITE, USER, assert_problem
from labels import Selector

URL = "/api/instances"
OTHER_SITE = "0f8e7d6c-5b4a-4c3d-9e2f-1a0b9c8d7e6f"


def body(**changes):
    return {"site_id": SITE, "user_id": USER, "name": "box", **changes}


def total(resp):
    return int(resp.headers["X-Total-Count"])


# -- the field -------------------------------------------------------------------

def test_labels_default_to_none(instance):
    assert instance["labels"] == {}


@pytest.mark.parametrize("labels", [
    {"env": "prod"},
    {"a": "", "0": "Z", "a.b_c-d/e": "A-b.c_D9"},
    {"k" * 63: "v" * 63},
    {"team/web": "x", "x-y": "1.2.3", "9": "9"},
    {f"k{n}": str(n) for n in range(32)},
])
def test_labels_are_stored_and_read_back_as_sent(client, labels):
    created = client.post(URL, json=body(labels=labels))
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["labels"] == labels
    fetched = client.get(created.headers["Location"])
    assert fetched.get_json()["labels"] == labels
    assert fetched.get_data() == created.get_data()


@pytest.mark.parametrize("key", [
    "", "A", "Env", "-a", "a-", ".a", "a.", "/a", "a/", "_a", "a_", "a b", "a!", "a=b", "é",
    "k" * 64, "a,b", "a\n",
])
def test_a_bad_label_key_is_422_naming_the_label(client, key):
    problem = assert_problem(client.post(URL, json=body(labels={key: "v", "ok": "v"})), 422,
                             "labels")
    assert list(problem["errors"]["json"]["labels"]) == [key]
    assert "key" in problem["errors"]["json"]["labels"][key]


@pytest.mark.parametrize("value", [
    "-x", "x-", ".x", "x.", "_x", "x_", "a b", "a/b", "a:b", "é", "x" * 64, "x\n", 1, 1.5, True,
    None, {}, [],
])
def test_a_bad_label_value_is_422_naming_the_label(client, value):
    problem = assert_problem(client.post(URL, json=body(labels={"env": value, "ok": "v"})),
                             422, "labels")
    assert list(problem["errors"]["json"]["labels"]) == ["env"]
    assert "value" in problem["errors"]["json"]["labels"]["env"]


@pytest.mark.parametrize("labels", [None, [], "env=prod", 5, {f"k{n}": "v" for n in range(33)}])
def test_labels_that_are_not_an_object_of_at_most_32_are_422(client, labels):
    problem = assert_problem(client.post(URL, json=body(labels=labels)), 422, "labels")
    if isinstance(labels, dict):
        assert "32" in " ".join(problem["errors"]["json"]["labels"])


def test_put_and_patch_replace_the_labels_whole(client, make_instance):
    created = make_instance(labels={"env": "prod", "team": "web"})
    url = f"{URL}/{created['id']}"
    for method in (client.put, client.patch):
        resp = method(url, json={"labels": {"env": "dev"}})
        assert resp.status_code == 200
        assert resp.get_json()["labels"] == {"env": "dev"}
        assert client.get(url).get_json()["labels"] == {"env": "dev"}
    assert client.patch(url, json={"labels": {}}).get_json()["labels"] == {}
    assert client.get(f"{URL}?label=env").headers["X-Total-Count"] == "0"


def test_an_update_without_labels_keeps_them(client, make_instance):
    created = make_instance(labels={"env": "prod"})
    url = f"{URL}/{created['id']}"
    assert client.patch(url, json={"name": "renamed"}).get_json()["labels"] == {"env": "prod"}
    same = client.put(url, json={"labels": {"env": "prod"}}).get_json()
    assert same["updated_at"] == client.get(url).get_json()["updated_at"]
    assert total(client.get(f"{URL}?label=env=prod")) == 1


def test_a_bad_label_in_an_update_changes_nothing(client, make_instance):
    created = make_instance(labels={"env": "prod"})
    url = f"{URL}/{created['id']}"
    assert_problem(client.patch(url, json={"labels": {"env": "prod", "Bad": "x"}}), 422,
                   "labels")
    assert client.get(url).get_json() == created


# -- the filter -------------------------------------------------------------------

LABELLED = [
    {"env": "prod", "team": "web"},
    {"env": "prod", "team": "db", "canary": ""},
    {"env": "dev", "team": "web"},
    {"env": "dev"},
    {"team": "web", "tier": "gold"},
    {},
    {"env": "prod"},
    {"env": "staging", "team": "db", "tier": "silver"},
]


@pytest.fixture
def labelled(make_instance):
    """LABELLED, oldest first, at two sites, alternately running and stopped."""
    return [make_instance(name=f"box {n}", labels=labels,
                          site_id=(SITE, OTHER_SITE)[n % 3 == 2],
                          status=("running", "stopped")[n % 2])
            for n, labels in enumerate(LABELLED)]


def holds(labels, selector):
    op, key, value = selector
    if op == "=":
        return labels.get(key) == value
    if op == "!=":
        return labels.get(key) != value
    return (key in labels) == (op == "has")


def parse(text):
    """The selectors of a `label` filter, for `holds`."""
    selectors = []
    for item in text.split(","):
        if item.startswith("!"):
            selectors.append(Selector("lacks", item[1:]))
        elif "!=" in item:
            selectors.append(Selector("!=", *item.split("!=")))
        elif "=" in item:
            selectors.append(Selector("=", *item.split("=")))
        else:
            selectors.append(Selector("has", item))
    return selectors


def expected(rows, text, **fields):
    """Ids of `rows` (oldest first) that the list must give, newest first."""
    return [row["id"] for row in reversed(rows)
            if all(holds(row["labels"], selector) for selector in parse(text))
            and all(row[name] == value for name, value in fields.items())]


SELECTORS = [
    "env=prod", "env=dev", "env=nope", "env!=prod", "env!=nope", "env", "!env", "canary",
    "canary=", "canary!=", "!canary", "tier=gold", "tier!=gold", "!tier", "team=web",
    "env=prod,team=web", "env=prod,team", "env=prod,!team", "env,team!=web", "!env,!team",
    "env=prod,env=dev", "env=prod,!env", "team=db,tier!=silver,env", "env=prod,env=prod",
    "team=web,env!=dev,!canary,!tier",
]


@pytest.mark.parametrize("text", SELECTORS)
def test_the_label_filter_gives_the_instances_that_hold_every_selector(client, labelled,
                                                                       text):
    resp = client.get(f"{URL}?{urlencode({'label': text})}")
    assert resp.status_code == 200
    ids = expected(labelled, text)
    assert [row["id"] for row in resp.get_json()] == ids
    assert total(resp) == len(ids)


@pytest.mark.parametrize("text", ["env=prod", "env!=dev", "team", "!tier", "env,!canary"])
@pytest.mark.parametrize("fields", [
    {"site_id": SITE}, {"status": "running"}, {"site_id": OTHER_SITE, "status": "stopped"},
])
def test_the_label_filter_combines_with_the_other_filters(client, labelled, text, fields):
    resp = client.get(f"{URL}?{urlencode({'label': text, **fields})}")
    assert resp.status_code == 200
    ids = expected(labelled, text, **fields)
    assert [row["id"] for row in resp.get_json()] == ids
    assert total(resp) == len(ids)


def test_the_label_filter_combines_with_q_and_sort(client, labelled):
    resp = client.get(f"{URL}?{urlencode({'label': 'env', 'q': 'BOX', 'sort': '-name'})}")
    wanted = sorted((row for row in labelled if "env" in row["labels"]),
                    key=lambda row: row["name"], reverse=True)
    assert [row["id"] for row in resp.get_json()] == [row["id"] for row in wanted]
    resp = client.get(f"{URL}?{urlencode({'label': 'env=prod', 'q': 'box 6'})}")
    assert [row["name"] for row in resp.get_json()] == ["box 6"]


def test_pages_of_a_label_filter_keep_it_in_their_links(client, labelled):
    query = urlencode({"label": "env,!canary", "status": "running,stopped", "limit": 2})
    ids, url, seen = [], f"{URL}?{query}", 0
    while url:
        resp = client.get(url)
        assert resp.status_code == 200
        assert total(resp) == 5
        ids += [row["id"] for row in resp.get_json()]
        links = dict((rel, link) for link, rel in (
            (part.split(";")[0].strip(" <>"), part.split('rel="')[1].rstrip('"'))
            for part in resp.headers.get("Link", "").split(",") if part))
        if "next" in links:
            assert parse_qs(urlsplit(links["next"]).query)["label"] == ["env,!canary"]
        url = links.get("next") and urlsplit(links["next"])._replace(scheme="", netloc="").geturl()
        seen += 1
    assert seen == 3
    assert ids == expected(labelled, "env,!canary")


def test_the_label_filter_follows_updates_and_deletes(client, labelled):
    first, second = labelled[0]["id"], labelled[1]["id"]
    client.patch(f"{URL}/{first}", json={"labels": {"env": "dev"}})
    client.delete(f"{URL}/{second}")
    prod = client.get(f"{URL}?label=env=prod").get_json()
    assert [row["id"] for row in prod] == [labelled[6]["id"]]
    assert [row["id"] for row in client.get(f"{URL}?label=canary").get_json()] == []
    assert first in [row["id"] for row in client.get(f"{URL}?label=env=dev").get_json()]


def test_the_same_selectors_in_any_order_give_the_same_list(client, labelled):
    lists = {tuple(row["id"] for row in client.get(
        f"{URL}?{urlencode({'label': ','.join(order)})}").get_json())
        for order in itertools.permutations(["env", "team!=db", "!tier"])}
    assert len(lists) == 1


@pytest.mark.parametrize("text, named", [
    ("", ""), ("env,", ""), (",env", ""), ("env,,team", ""), ("env==prod", "env==prod"),
    ("env=prod=x", "env=prod=x"), ("Env=prod", "Env=prod"), ("env=pr od", "env=pr od"),
    ("env in (prod)", "env in (prod)"), ("!", "!"), ("!env=prod", "!env=prod"),
    ("env!", "env!"), ("env=-x", "env=-x"), ("!=x", "!=x"), ("env=prod,team==web", "team==web"),
    ("k" * 64, "k" * 64), ("env=" + "v" * 64, "env=" + "v" * 64), ("env=a/b", "env=a/b"),
])
def test_a_malformed_selector_is_422_naming_it(client, text, named):
    problem = assert_problem(client.get(f"{URL}?{urlencode({'label': text})}"), 422, "label",
                             where="query")
    assert named in problem["errors"]["query"]["label"]


def test_more_than_32_selectors_are_422(client):
    text = ",".join(f"k{n}" for n in range(33))
    assert_problem(client.get(f"{URL}?{urlencode({'label': text})}"), 422, "label",
                   where="query")
    text = ",".join(f"k{n}" for n in range(32))
    assert client.get(f"{URL}?{urlencode({'label': text})}").status_code == 200


def test_the_label_filter_is_given_once(client):
    assert_problem(client.get(f"{URL}?label=env&label=team"), 422, "label", where="query")


# -- the plan: driven from the label index, or tested row by row ----------------------

@pytest.mark.sqlite_only   # PostgreSQL's planner makes this choice itself
def test_a_rare_selector_drives_the_query_and_a_common_one_is_tested_row_by_row(
        client, make_instance):
    for n in range(40):
        make_instance(name=f"box {n}", labels={"env": "prod"} if n % 2 else {"rare": "yes"}
                      if n == 10 else {})
    rare, common = Selector("=", "rare", "yes"), Selector("=", "env", "prod")
    planned = dict(wanted=10, only_labels=True, narrowed=False, newest_first=True)
    with_rare = search.plan([common, rare], None, **planned)
    assert (with_rare.page, with_rare.count, with_rare.ordered) == (1, 1, False)
    # One key=value newest first: a range of the label index, counted by its counter.
    alone = search.plan([common], None, **planned)
    assert (alone.ordered, alone.alone) == (True, True)
    # Sorted otherwise, the common label is tested row by row in the sort's order.
    by_name = search.plan([common], None, **{**planned, "newest_first": False})
    assert (by_name.page, by_name.alone, by_name.ordered) == (None, True, False)
    # Either way, the same instances.
    everything = client.get(f"{URL}?limit=100").get_json()[::-1]   # oldest first
    for query in ("env=prod", "rare=yes", "env=prod,rare=yes", "rare=yes,!env"):
        for sort in ({}, {"sort": "name"}, {"sort": "-created_at"}):
            rows = client.get(f"{URL}?{urlencode({'label': query, 'limit': 10, **sort})}")
            wanted = expected(everything, query)
            if sort.get("sort") == "name":
                names = {row["id"]: row["name"] for row in everything}
                wanted = sorted(wanted, key=lambda row_id: (names[row_id], ""))
            assert total(rows) == len(wanted)
            assert [row["id"] for row in rows.get_json()] == wanted[:10]


# -- SQLite: the label rows' activity (search.LABEL_ACTIVITY) ----------------------

def label_activity_agrees():
    """Every label row holds its instance's last_activity_at, and every label
    of every instance has its row."""
    from storage import db
    rows = db.execute_sql(
        "SELECT instance.id, instance.last_activity_at, each.key, label.active_at "
        "FROM instance, json_each(instance.labels) AS each "
        "LEFT JOIN instance_label AS label "
        "ON label.key = each.key AND label.instance_id = instance.id").fetchall()
    assert rows and all(active == held for _, held, _, active in rows), rows
    labels = db.execute_sql("SELECT count(*) FROM instance_label").fetchone()[0]
    assert labels == len(rows)


@pytest.mark.sqlite_only
def test_each_label_row_holds_its_instances_activity_through_every_write(
        app, client, make_instance):
    import models
    from storage.fields import utcnow
    from storage.writes import write

    made = [make_instance(name=f"i{n}", labels={"env": "prod", "team": f"t{n % 2}"})
            for n in range(4)]
    made.append(make_instance(name="bare"))
    first, second, third = (instance["id"] for instance in made[:3])
    hour_ago = utcnow() - timedelta(hours=1)
    with app.app_context(), write():   # so that each write below moves the activity
        models.Instance.update(last_activity_at=hour_ago).execute()
        label_activity_agrees()
    client.post(f"/api/instances/{first}/logs", json={"log_type": "system", "message": "m"})
    client.patch(f"/api/instances/{second}", json={"labels": {"env": "dev", "new": "x"}})
    client.patch(f"/api/instances/{third}", json={"name": "renamed"})
    client.patch(f"/api/instances/{made[4]['id']}", json={"labels": {"env": "prod"}})
    client.delete(f"/api/instances/{made[3]['id']}")
    with app.app_context():
        label_activity_agrees()
        moved = models.Instance.select(models.Instance.id).where(
            models.Instance.last_activity_at > hour_ago)
        assert {str(row.id) for row in moved} == {first, second, third, made[4]["id"]}


@pytest.mark.sqlite_only
def test_a_version_12_database_fills_in_its_label_rows_activity(app, client, make_instance):
    import migrations
    import models
    from conftest import close_connections, undo_label_activity

    for n in range(3):
        make_instance(name=f"i{n}", labels={"env": "prod", "n": str(n)})
    with app.app_context(), models.db.atomic():
        undo_label_activity()
        models.SchemaVersion.update(version=12).execute()
    close_connections()
    with app.app_context():
        migrations.create_tables()
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
        label_activity_agrees()
