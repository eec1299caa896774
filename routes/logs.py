"""/api/instances/{id}/logs: what happened on an instance."""
from flask.views import MethodView

from models import Instance, InstanceLog
from routes.common import Blueprint, created, get_or_404, not_found
from routes.lists import list_response
from routes.docs import one_or_many
from schemas import BATCH_MAX, LogBatchSchema, LogOneOrManySchema, LogQuerySchema, LogSchema

blp = Blueprint("logs", __name__, url_prefix="/api/instances/<uuid:instance_id>/logs",
                description="Events of an instance. Logs are immutable once written.")


@blp.route("")
class InstanceLogs(MethodView):
    @blp.arguments(LogQuerySchema, location="query")
    @blp.response(200, LogSchema(many=True))
    def get(self, args, instance_id):
        """List an instance's logs, newest first, or oldest first after a cursor."""
        return list_response(InstanceLog, args, instance_id, kept_count=Instance.log_count)

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
