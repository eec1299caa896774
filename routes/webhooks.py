"""/api/webhooks: where the fleet's events are POSTed (CONTRACT 4.4, 4.7).
The secret is shown in the create and rotate answers only."""
import orjson
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort
from werkzeug.http import generate_etag

from fleet_schemas import (
    SecretSchema, WebhookCreateSchema, WebhookCreatedSchema, WebhookQuerySchema,
    WebhookSchema, WebhookUpdateSchema,
)
from routes.common import Blueprint, created, not_found
from routes.lists import MAX_OFFSET, page_links
from storage.engines import for_write, lock_key
from storage.writes import write
from webhooks import store
from webhooks.store import Webhook

blp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks",
                description="URLs the fleet's events are POSTed to, signed.")


@blp.route("")
class Webhooks(MethodView):
    @blp.arguments(WebhookQuerySchema, location="query")
    @blp.response(200, WebhookSchema(many=True))
    def get(self, args):
        """List webhooks, newest first, with their delivery state."""
        total = Webhook.select().count()
        rows = (Webhook.select().order_by(Webhook.created_at.desc(), Webhook.id.desc())
                .limit(args["limit"]).offset(min(args["offset"], MAX_OFFSET)))
        headers = {"X-Total-Count": str(total)}
        link = page_links(total, args["limit"], args["offset"])
        if link:
            headers["Link"] = link
        return [store.representation(row) for row in rows], headers

    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.doc(responses={"409": "Conflict"})
    def post(self, data):
        """Create a webhook; its secret is in this answer only."""
        most = current_app.config["MAX_WEBHOOKS"]
        with write():
            lock_key("webhooks: create")   # the count and the insert, one at a time
            if Webhook.select().count() >= most:
                abort(409, message=f"There are already {most} webhooks "
                                   "(INSTANCES_MAX_WEBHOOKS); delete one first.")
            row = store.create(data)
        return created(row, "webhooks.WebhookById", webhook_id=row["id"])


@blp.route("/<uuid:webhook_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    def get(self, webhook_id):
        """Fetch a webhook with its delivery state."""
        return store.representation(webhook_or_404(webhook_id))

    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    def patch(self, data, webhook_id):
        """Change a webhook's url, types, label, description or active."""
        with write():
            webhook = store.update(webhook_or_404(webhook_id, lock=True), data)
        return store.representation(webhook)

    @blp.response(204)
    def delete(self, webhook_id):
        """Delete a webhook; nothing more is sent to it."""
        with write():
            webhook_or_404(webhook_id, lock=True).delete_instance()


@blp.route("/<uuid:webhook_id>/rotate-secret")
class WebhookSecret(MethodView):
    @blp.response(200, SecretSchema)
    def post(self, webhook_id):
        """Make a new secret (shown once); the old one also signs for 24 hours."""
        with write():
            return {"secret": store.rotate(webhook_or_404(webhook_id, lock=True))}


def webhook_or_404(webhook_id, lock=False):
    """The webhook; when `lock`ed for a write, once If-Match (if sent) names
    the ETag of its representation as a GET answers it (2.2)."""
    query = Webhook.select().where(Webhook.id == webhook_id)
    webhook = (for_write(query) if lock else query).first()
    if webhook is None:
        not_found(Webhook, webhook_id)
    if lock and request.if_match:
        body = orjson.dumps(WebhookSchema().dump(store.representation(webhook)))
        if not request.if_match.contains(generate_etag(body)):
            abort(412, message="The webhook changed since the ETag in If-Match was read "
                               "(its delivery state moves too); GET it again.")
    return webhook
