"""/healthz: liveness with a real database round trip."""
from flask.views import MethodView
from marshmallow import Schema, fields
from peewee import DatabaseError

from models import Instance
from routes.common import Blueprint, abort

blp = Blueprint("health", __name__, description="Service health.")


class HealthSchema(Schema):
    status = fields.String(metadata={"enum": ["ok"]})

    EXAMPLE = {"status": "ok"}


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(responses={503: "ServiceUnavailable"})
    def get(self):
        """Report whether the service can read its database."""
        try:
            # Reads a page of the file, so a missing, locked-out or corrupt
            # database shows here, not just a dead connection.
            Instance.select(Instance.id).limit(1).execute()
        except DatabaseError as exc:
            abort(503, message=f"The database is not available: {exc}.")
        return {"status": "ok"}
