"""/api/instances/{id}/plans: objectives and tasks an agent works on."""
from flask.views import MethodView

from models import MAX_ANCESTORS, Instance, InstancePlan
from storage.writes import write
from routes.common import (
    Blueprint, created, get_for_write, get_or_404, invalid, require_instance,
)
from routes.lists import list_response
from schemas import PlanCreateSchema, PlanQuerySchema, PlanSchema, PlanUpdateSchema

blp = Blueprint("plans", __name__, url_prefix="/api/instances/<uuid:instance_id>/plans",
                description="Objectives and tasks of an instance, as a tree by parent_id.")


@blp.route("")
class InstancePlans(MethodView):
    @blp.arguments(PlanQuerySchema, location="query")
    @blp.response(200, PlanSchema(many=True))
    def get(self, args, instance_id):
        """List an instance's plans, newest first unless sorted."""
        return list_response(InstancePlan, PlanSchema, args, instance_id)

    @blp.arguments(PlanCreateSchema)
    @blp.response(201, PlanSchema)
    def post(self, data, instance_id):
        """Add a plan to an instance."""
        with write():
            require_instance(instance_id, lock=True)
            check_parent(instance_id, data["parent_id"])
            plan = InstancePlan.create(instance=instance_id, **data)
            Instance.record_activity(instance_id)
        return created(plan, "plans.InstancePlanById", instance_id=instance_id, plan_id=plan.id)


@blp.route("/<uuid:plan_id>")
class InstancePlanById(MethodView):
    @blp.response(200, PlanSchema)
    def get(self, instance_id, plan_id):
        """Fetch one plan of an instance."""
        return get_or_404(InstancePlan, plan_id, instance_id)

    @blp.arguments(PlanUpdateSchema)
    @blp.response(200, PlanSchema)
    def put(self, data, instance_id, plan_id):
        """Update some fields of a plan; the others keep their values."""
        with write():
            plan = get_for_write(InstancePlan, plan_id, PlanSchema, instance_id)
            if "parent_id" in data:
                check_parent(instance_id, data["parent_id"], plan)
            Instance.record_activity(instance_id)
            return plan.apply(data)

    patch = put

    @blp.response(204)
    def delete(self, instance_id, plan_id):
        """Delete a plan; its child plans stay, as top-level plans."""
        with write():
            plan = get_for_write(InstancePlan, plan_id, PlanSchema, instance_id)
            plan.detach_children()
            plan.delete_instance()
            Instance.record_activity(instance_id)


def check_parent(instance_id, parent_id, plan=None):
    """2.4: a parent is another plan of the same instance, never the plan
    itself or one of its descendants (which would make a cycle), and leaves
    no plan with more than MAX_ANCESTORS ancestors. One statement."""
    if parent_id is None:
        return
    found = InstancePlan.ancestry(instance_id, parent_id, plan and plan.id)
    if found is None:
        invalid("json", "parent_id", f"No plan with id {parent_id} on this instance.")
    cycle, deepest = found
    if cycle:
        invalid("json", "parent_id", "A plan cannot be its own parent or ancestor.")
    if deepest > MAX_ANCESTORS:
        moved = "a new plan" if plan is None else "this plan or one of its descendants"
        invalid("json", "parent_id", f"A plan has at most {MAX_ANCESTORS} ancestors; under "
                f"this parent {moved} would have more.")
