"""/api/instances/{id}/logs: what happened on an instance, and its live
tail: a list after a cursor that waits for the next log (CONTRACT 3.3)."""
from flask import request
from flask.views import MethodView

import metrics

from models import Instance, InstanceLog
from routes.common import Blueprint, created, get_or_404, not_found
from routes.lists import list_response
from routes.docs import one_or_many
from schemas import BATCH_MAX, LogBatchSchema, LogOneOrManySchema, LogQuerySchema, LogSchema
from storage import db

blp = Blueprint("logs", __name__, url_prefix="/api/instances/<uuid:instance_id>/logs",
                description="Events of an instance. Logs are immutable once written.")


@blp.route("")
class InstanceLogs(MethodView):
    @blp.arguments(LogQuerySchema, location="query")
    @blp.response(200, LogSchema(many=True))
    @blp.alt_response(410, response="Gone")
    def get(self, args, instance_id):
        """List an instance's logs, newest first, or as committed after a cursor (and wait)."""
        def page():
            return list_response(InstanceLog, LogSchema, args, instance_id,
                                 kept_count=Instance.log_count)

        return held(page, str(instance_id), args["wait"]) if args.get("wait") else page()

    @blp.arguments(LogBatchSchema)
    @blp.response(201, LogOneOrManySchema)
    @blp.doc(requestBody={"content": {"application/json": {
                 "schema": one_or_many("LogCreate", BATCH_MAX)}}},
             responses={201: {"content": {"application/json": {
                 "schema": one_or_many("Log", BATCH_MAX)}}}})
    def post(self, data, instance_id):
        """Append one log (an object) or a batch of 1 to 1000 (an array)."""
        logs = InstanceLog.append(instance_id, data if isinstance(data, list) else [data])
        if logs is None:
            not_found(Instance, instance_id)
        if isinstance(data, list):
            return logs
        return created(logs[0], "logs.InstanceLogById", instance_id=instance_id,
                       log_id=logs[0]["id"])


@blp.route("/<uuid:log_id>")
class InstanceLogById(MethodView):
    @blp.response(200, LogSchema)
    def get(self, instance_id, log_id):
        """Fetch one log of an instance."""
        return get_or_404(InstanceLog, log_id, instance_id)


# How soon a fleet feed's reader looks again while rows past its cursor
# are held back (feed_reads.Query.held_back): their transaction may have
# committed without a notification (one that wrote no log or event).
HELD_BACK_RECHECK = 0.05


def held(page, key, seconds, pending=None):
    """`page()`, read again each time the instance `key` changes while it is
    empty (or the fleet feed `key`: storage.tail), until the wait of `seconds`
    is over. A page read at the deadline, or when the server stops, is the
    answer whatever it holds; `page()` itself answers 404 once the instance
    is deleted. While `pending()` says rows are held back, it reads again
    within HELD_BACK_RECHECK seconds even without a touch."""
    with db.tail.waiting(key, seconds) as wait:
        if wait is None:    # past the bound, or stopping: as if wait=0
            return page()
        metrics.waiting(request.environ)
        try:
            return waited(page, wait, pending)
        finally:
            metrics.waited()


def waited(page, wait, pending=None):
    """The reads of a wait that was admitted (see held)."""
    while True:
        seen = wait.version
        rows, headers = page()
        if rows or wait.over():
            return rows, headers
        # Asleep with no connection: no pool slot taken (PostgreSQL), no
        # transaction left open on this thread's connection (SQLite).
        soon = pending is not None and pending()
        db.release()
        wait.sleep(seen, at_most=HELD_BACK_RECHECK if soon else None)
