"""/api/instances: the machine records, and their counts."""
from flask.views import MethodView
from flask_smorest import abort

from models import ENDED_STATUSES, Instance
from storage.writes import write
from routes.common import (
    Blueprint, created, get_for_write, get_or_404, not_found, require_no_body,
)
from routes.counts import count_response
from routes.lists import list_response
from schemas import (
    CountsSchema, InstanceCountsQuerySchema, InstanceCreateSchema, InstanceQuerySchema,
    InstanceSchema, InstanceUpdateSchema,
)

blp = Blueprint("instances", __name__, url_prefix="/api/instances",
                description="Remote machine instances driven by agents.")


@blp.route("")
class Instances(MethodView):
    @blp.arguments(InstanceQuerySchema, location="query")
    @blp.response(200, InstanceSchema(many=True))
    def get(self, args):
        """List instances, newest first unless sorted."""
        return list_response(Instance, InstanceSchema, args)

    @blp.arguments(InstanceCreateSchema)
    @blp.response(201, InstanceSchema)
    def post(self, data):
        """Create an instance."""
        [instance] = Instance.add([data])
        return created(instance, "instances.InstanceById", instance_id=instance["id"])


# Not an instance id: the rule below takes only UUIDs, so /counts is this
# view's whatever the order, and /api/instances/{anything else} stays a 404.
@blp.route("/counts")
class InstanceCounts(MethodView):
    @blp.arguments(InstanceCountsQuerySchema, location="query")
    @blp.response(200, CountsSchema)
    def get(self, args):
        """Count the instances that pass the list's filters, in total and by field."""
        return count_response(args)


@blp.route("/<uuid:instance_id>")
class InstanceById(MethodView):
    @blp.response(200, InstanceSchema)
    def get(self, instance_id):
        """Fetch one instance."""
        return get_or_404(Instance, instance_id)

    @blp.arguments(InstanceUpdateSchema)
    @blp.response(200, InstanceSchema)
    def put(self, data, instance_id):
        """Update some fields of an instance; the others keep their values."""
        with write():
            return get_for_write(Instance, instance_id, InstanceSchema).apply(data)

    patch = put

    @blp.response(204)
    def delete(self, instance_id):
        """Delete an instance with its logs and plans."""
        with write():
            get_for_write(Instance, instance_id, InstanceSchema).delete_instance()


@blp.route("/<uuid:instance_id>/heartbeat")
class InstanceHeartbeat(MethodView):
    @blp.response(204)
    @blp.alt_response(409, response="Conflict")
    @blp.doc(requestBody={"required": False, "content": {"application/json": {
        "schema": {"type": "object", "maxProperties": 0}}}})
    def post(self, instance_id):
        """Tell the service the instance's agent is alive: moves last_activity_at only."""
        require_no_body()
        with write():
            found = Instance.heartbeat(instance_id)
        if found is None:
            not_found(Instance, instance_id)
        status, reason = found
        if status in ENDED_STATUSES:
            # 4.7: the agent learns that it was ended, and why; nothing changes.
            abort(409, message=f"The instance has ended (status {status}); a heartbeat "
                               "does not start it again.",
                  members={"instance_status": status, "status_reason": reason})
