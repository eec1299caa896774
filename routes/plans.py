"""/api/instances/{id}/plans: objectives and tasks an agent works on."""
from flask.views import MethodView

from models import InstancePlan
from routes.common import (
    Blueprint, children_of, created, get_or_404, list_response, require_instance,
)
from schemas import PlanCreateSchema, PlanQuerySchema, PlanSchema

blp = Blueprint("plans", __name__, url_prefix="/api/instances/<uuid:instance_id>/plans",
                description="Objectives and tasks of an instance.")


@blp.route("")
class InstancePlans(MethodView):
    @blp.arguments(PlanQuerySchema, location="query")
    @blp.response(200, PlanSchema(many=True))
    def get(self, args, instance_id):
        """List an instance's plans, newest first."""
        return list_response(children_of(InstancePlan, instance_id), args)

    @blp.arguments(PlanCreateSchema)
    @blp.response(201, PlanSchema)
    def post(self, data, instance_id):
        """Add a plan to an instance."""
        require_instance(instance_id)
        plan = InstancePlan.create(instance=instance_id, **data)
        return created(plan, "plans.InstancePlanById", instance_id=instance_id, plan_id=plan.id)


@blp.route("/<uuid:plan_id>")
class InstancePlanById(MethodView):
    @blp.response(200, PlanSchema)
    def get(self, instance_id, plan_id):
        """Fetch one plan of an instance."""
        return get_or_404(InstancePlan, plan_id, InstancePlan.instance == instance_id)
