"""/api/logs and /api/events: the fleet's feeds (CONTRACT 4.3, 4.4), lists
like the others (newest first, paged), or in commit order after a cursor,
held with `wait` until something new is committed (storage.tail, under the
feeds' own keys)."""
import uuid

from flask.views import MethodView
from flask_smorest import abort

import feeds
from feed_reads import EVENTS, LOGS, Query, position_of
from fleet_schemas import EventQuerySchema, EventSchema, FleetLogQuerySchema
from routes.common import Blueprint
from routes.lists import base_url, page_links, page_url
from routes.logs import held
from schemas import LogSchema
from storage.tail import FLEET_LOGS

logs_blp = Blueprint("fleet_logs", __name__, url_prefix="/api/logs",
                     description="Every instance's logs in one list, and its live stream.")
events_blp = Blueprint("events", __name__, url_prefix="/api/events",
                       description="The fleet's changes: instances and plans created, updated, "
                                   "deleted.")


@logs_blp.route("")
class FleetLogs(MethodView):
    @logs_blp.arguments(FleetLogQuerySchema, location="query")
    @logs_blp.response(200, LogSchema(many=True))
    @logs_blp.doc(responses={"410": "Gone"})
    def get(self, args):
        """List every instance's logs, newest first, or as committed after a cursor (and wait)."""
        return feed_response(LOGS, args, FLEET_LOGS)


@events_blp.route("")
class Events(MethodView):
    @events_blp.arguments(EventQuerySchema, location="query")
    @events_blp.response(200, EventSchema(many=True))
    @events_blp.doc(responses={"410": "Gone"})
    def get(self, args):
        """List the fleet's changes, newest first, or as committed after a cursor (and wait)."""
        return feed_response(EVENTS, args, feeds.EVENTS)


@events_blp.route("/<uuid:event_id>")
class EventById(MethodView):
    @events_blp.response(200, EventSchema)
    def get(self, event_id):
        """Fetch one event (404 once it is past retention)."""
        rows = Query(EVENTS, {}).one(event_id)
        if not rows:
            abort(404, message=f"No event with id {event_id}.")
        return rows[0]


def feed_response(source, args, key):
    """A page of the feed `source` for the list arguments `args`, with
    X-Total-Count (exact up to feed_reads.COUNT_LIMIT, left out beyond) and
    Link; after a cursor, held up to `wait` seconds on the wait key `key`."""
    query = Query(source, args)
    limit = args["limit"]
    if "after" not in args:
        rows = query.page(limit, args["offset"], args.get("sort", ()))
        total = query.count()
        return rows, headers(total, offset_links(total, limit, args["offset"], len(rows)))
    position = start_of(source, args["after"])

    def page():
        rows = query.after(position, limit)
        link = None
        if rows:
            link = f'<{page_url(base_url(), after=str(rows[-1]["position"]))}>; rel="next"'
        return rows, headers(query.count(), link)

    if args.get("wait"):
        return held(page, key, args["wait"], pending=lambda: query.held_back(position))
    return page()


def start_of(source, cursor):
    """The Position a cursor (a Position or a row id) starts after; 410 for
    an id that names no row, or an event position older than what is kept."""
    noun = "log" if source is LOGS else "event"
    if isinstance(cursor, uuid.UUID):
        position = position_of(source, cursor)
        if position is None:
            abort(410, message=f"No {noun} with id {cursor} is kept (deleted, or past "
                               f"retention); start again from a position or without after.")
        return position
    if source is EVENTS and cursor != feeds.START:
        purged = feeds.purged_through()
        if purged is not None and tuple(cursor) < tuple(purged):
            abort(410, message="Events after this position are past retention and gone; "
                               "start again without after, or from p0.")
    return cursor


def headers(total, link):
    found = {} if total is None else {"X-Total-Count": str(total)}
    if link:
        found["Link"] = link
    return found


def offset_links(total, limit, offset, length):
    """Next/prev links of an offset page; beyond the exact count, a full page
    has a next one."""
    if total is not None:
        return page_links(total, limit, offset)
    links = []
    base = base_url()
    if limit and length == limit:
        links.append(f'<{page_url(base, offset=offset + limit)}>; rel="next"')
    if limit and offset > 0:
        links.append(f'<{page_url(base, offset=max(0, offset - limit))}>; rel="prev"')
    return ", ".join(links)
