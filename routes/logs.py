"""/api/instances/{id}/logs: what happened on an instance."""
from flask.views import MethodView

from models import InstanceLog
from routes.common import (
    Blueprint, children_of, created, get_or_404, list_response, require_instance,
)
from schemas import LogCreateSchema, LogQuerySchema, LogSchema

blp = Blueprint("logs", __name__, url_prefix="/api/instances/<uuid:instance_id>/logs",
                description="Events of an instance.")


@blp.route("")
class InstanceLogs(MethodView):
    @blp.arguments(LogQuerySchema, location="query")
    @blp.response(200, LogSchema(many=True))
    def get(self, args, instance_id):
        """List an instance's logs, newest first."""
        return list_response(children_of(InstanceLog, instance_id), args)

    @blp.arguments(LogCreateSchema)
    @blp.response(201, LogSchema)
    def post(self, data, instance_id):
        """Append a log to an instance."""
        require_instance(instance_id)
        log = InstanceLog.create(instance=instance_id, **data)
        return created(log, "logs.InstanceLogById", instance_id=instance_id, log_id=log.id)


@blp.route("/<uuid:log_id>")
class InstanceLogById(MethodView):
    @blp.response(200, LogSchema)
    def get(self, instance_id, log_id):
        """Fetch one log of an instance."""
        return get_or_404(InstanceLog, log_id, InstanceLog.instance == instance_id)
