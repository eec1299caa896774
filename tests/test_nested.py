"""What the two collections under an instance, /api/instances/{id}/logs and
/api/instances/{id}/plans, have in common: the parent instance must exist, the
item route, and how a list is ordered, paged and kept to its own instance.
Every test here runs once for each of the two resources."""
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import assert_problem, random_id


@dataclass(frozen=True)
class Nested:
    """A resource under an instance, as the shared tests need to know it."""

    collection: str  # the path segment after /api/instances/{id}/
    factory: str  # the conftest fixture that creates one row
    body: dict  # a minimal valid body to POST
    sample: dict  # fields other than the defaults, for a row to read back
    numbered: Callable[[int], dict]  # fields that tell the n-th row of a list apart
    filter_field: str  # a list filter, for the tests that page or split filtered lists
    filter_value: str  # the value the filtered rows have
    other_value: str  # another value, for rows the filter leaves out


LOGS = Nested(
    collection="logs",
    factory="make_log",
    body={"log_type": "system", "message": "m"},
    sample={"log_type": "error", "level": "error", "message": "boom", "details": {"code": 7}},
    numbered=lambda n: {"message": f"event {n}"},
    filter_field="level",
    filter_value="error",
    other_value="info",
)

PLANS = Nested(
    collection="plans",
    factory="make_plan",
    body={"title": "Open the browser", "plan_type": "task"},
    sample={"title": "Fill the form", "priority": 3, "instructions": "Tab through fields"},
    # Priorities that go up and down: the list order must not follow them.
    numbered=lambda n: {"title": f"step {n}", "priority": n % 3},
    filter_field="status",
    filter_value="failed",
    other_value="pending",
)


@pytest.fixture(params=[pytest.param(LOGS, id="logs"), pytest.param(PLANS, id="plans")])
def nested(request):
    return request.param


@pytest.fixture
def make(request, nested):
    """The factory of the resource under test: make(instance_id=None, **fields)."""
    return request.getfixturevalue(nested.factory)


@pytest.fixture
def url(instance, nested):
    return f"/api/instances/{instance['id']}/{nested.collection}"


def path_of(url):
    """The path and query of an absolute URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def links(resp):
    """The Link header as {rel: path-and-query}."""
    header = resp.headers.get("Link", "")
    return {rel: path_of(url) for url, rel in re.findall(r'<([^>]*)>;\s*rel="([^"]+)"', header)}


def ids(resp):
    return [row["id"] for row in resp.get_json()]


def query_of(link):
    return parse_qs(urlsplit(link).query)


METHODS = pytest.mark.parametrize("method", ["GET", "POST"])


def send(client, nested, method, instance_id):
    """A GET or a valid POST on the collection under `instance_id`."""
    body = nested.body if method == "POST" else None
    return client.open(f"/api/instances/{instance_id}/{nested.collection}",
                       method=method, json=body)


# -- parent instance ---------------------------------------------------------

@METHODS
def test_a_collection_under_an_unknown_instance_is_404(client, nested, method):
    assert_problem(send(client, nested, method, random_id()), 404)


@pytest.mark.parametrize("bad_id", [
    "not-a-uuid",
    "123",
    pytest.param("5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a0", id="one-digit-short"),
])
@METHODS
def test_a_collection_under_a_malformed_instance_id_is_404(client, nested, method, bad_id):
    assert_problem(send(client, nested, method, bad_id), 404)


def test_a_collection_of_a_deleted_instance_is_404(client, nested, instance, make):
    make()
    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204

    for method in ("GET", "POST"):
        assert_problem(send(client, nested, method, instance["id"]), 404)


# -- single item -------------------------------------------------------------

def test_a_nested_item_is_served_by_its_id(client, nested, make, url):
    item = make(**nested.sample)

    resp = client.get(f"{url}/{item['id']}")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == item


def test_a_nested_item_is_served_by_upper_case_ids(client, nested, instance, make):
    item = make()

    resp = client.get(
        f"/api/instances/{instance['id'].upper()}/{nested.collection}/{item['id'].upper()}")

    assert resp.status_code == 200
    assert resp.get_json()["id"] == item["id"]


def test_an_unknown_nested_item_id_is_404(client, make, url):
    make()
    assert_problem(client.get(f"{url}/{random_id()}"), 404)


def test_a_malformed_nested_item_id_is_404(client, url):
    assert_problem(client.get(f"{url}/not-a-uuid"), 404)


def test_a_nested_item_reached_through_another_instance_is_404(client, nested, make_instance,
                                                               make):
    other = make_instance(name="other")
    item = make()

    assert_problem(client.get(f"/api/instances/{other['id']}/{nested.collection}/{item['id']}"),
                   404)


def test_a_nested_item_under_an_unknown_instance_is_404(client, nested, make):
    item = make()
    assert_problem(client.get(f"/api/instances/{random_id()}/{nested.collection}/{item['id']}"),
                   404)


# -- lists -------------------------------------------------------------------

def test_the_list_of_a_new_instance_is_empty(client, url):
    resp = client.get(url)

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "0"
    assert "Link" not in resp.headers or resp.headers["Link"] == ""


def test_the_list_is_newest_first(client, nested, make, url):
    made = [make(**nested.numbered(n))["id"] for n in range(5)]

    resp = client.get(url)

    assert resp.status_code == 200
    assert ids(resp) == made[::-1]
    stamps = [datetime.fromisoformat(row["created_at"]) for row in resp.get_json()]
    assert stamps == sorted(stamps, reverse=True)
    assert resp.headers["X-Total-Count"] == "5"


def test_the_list_pages_with_limit_offset_and_links(client, nested, make, url):
    made = [make(**nested.numbered(n))["id"] for n in range(5)][::-1]

    first = client.get(f"{url}?limit=2")
    assert ids(first) == made[0:2]
    assert first.headers["X-Total-Count"] == "5"
    assert set(links(first)) == {"next"}

    middle = client.get(links(first)["next"])
    assert middle.status_code == 200
    assert ids(middle) == made[2:4]
    assert middle.headers["X-Total-Count"] == "5"
    assert set(links(middle)) == {"next", "prev"}

    last = client.get(links(middle)["next"])
    assert ids(last) == made[4:]
    assert set(links(last)) == {"prev"}

    assert ids(client.get(links(last)["prev"])) == made[2:4]
    assert ids(client.get(links(middle)["prev"])) == made[0:2]


def test_offset_and_limit_select_the_window_of_the_list(client, nested, make, url):
    made = [make(**nested.numbered(n))["id"] for n in range(4)][::-1]

    resp = client.get(f"{url}?limit=2&offset=1")

    assert ids(resp) == made[1:3]
    assert resp.headers["X-Total-Count"] == "4"
    assert set(links(resp)) == {"next", "prev"}


def test_the_paging_links_keep_the_filters(client, nested, make, url):
    field = nested.filter_field
    for _ in range(3):
        make(**{field: nested.filter_value})
    make(**{field: nested.other_value})

    resp = client.get(f"{url}?{field}={nested.filter_value}&limit=1&offset=1")

    assert resp.headers["X-Total-Count"] == "3"
    for rel, offset in (("next", "2"), ("prev", "0")):
        assert query_of(links(resp)[rel]) == {
            field: [nested.filter_value], "limit": ["1"], "offset": [offset]}


def test_an_offset_past_the_end_is_an_empty_page(client, make, url):
    make()

    # Past SQLite's 64-bit integers too: still a non-negative integer.
    for offset in (5, 10, 2**63, 10**30):
        resp = client.get(f"{url}?offset={offset}")

        assert resp.status_code == 200
        assert resp.get_json() == []
        assert resp.headers["X-Total-Count"] == "1"


def test_limit_zero_counts_the_rows_without_listing_them(client, make, url):
    make()
    make()

    resp = client.get(f"{url}?limit=0")

    assert resp.status_code == 200
    assert resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "2"


def test_rows_of_one_instance_never_show_under_another(client, nested, make_instance, make,
                                                       url):
    match = f"{nested.filter_field}={nested.filter_value}"
    fields = {nested.filter_field: nested.filter_value}
    other = make_instance(name="other")
    mine = [make(**fields)["id"] for _ in range(2)]
    theirs = make(instance_id=other["id"], **fields)["id"]
    other_url = f"/api/instances/{other['id']}/{nested.collection}"

    assert ids(client.get(url))[::-1] == mine
    assert client.get(url).headers["X-Total-Count"] == "2"
    assert ids(client.get(other_url)) == [theirs]
    filtered = client.get(f"{other_url}?{match}")
    assert ids(filtered) == [theirs]
    assert filtered.headers["X-Total-Count"] == "1"
    assert client.get(f"{url}?{match}").headers["X-Total-Count"] == "2"
