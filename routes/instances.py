"""/api/instances: the machine records."""
from flask.views import MethodView

from models import Instance
from storage.writes import write
from routes.common import Blueprint, created, get_for_write, get_or_404, list_response
from schemas import InstanceCreateSchema, InstanceQuerySchema, InstanceSchema, InstanceUpdateSchema

blp = Blueprint("instances", __name__, url_prefix="/api/instances",
                description="Remote machine instances driven by agents.")


@blp.route("")
class Instances(MethodView):
    @blp.arguments(InstanceQuerySchema, location="query")
    @blp.response(200, InstanceSchema(many=True))
    def get(self, args):
        """List instances, newest first unless sorted."""
        return list_response(Instance, args)

    @blp.arguments(InstanceCreateSchema)
    @blp.response(201, InstanceSchema)
    def post(self, data):
        """Create an instance."""
        [instance] = Instance.add([data])
        return created(instance, "instances.InstanceById", instance_id=instance["id"])


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
