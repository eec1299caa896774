"""GET /metrics (CONTRACT 4.5): Prometheus' text exposition of metrics.py,
summed over the server's worker processes. Not JSON and not part of the
API's resources, so it stays out of the OpenAPI document (registered on the
app, like the pages); it needs a token when tokens are configured
(routes/access.py)."""
from flask import Blueprint, Response

import metrics

blp = Blueprint("metrics", __name__)

# Prometheus' text format, version 0.0.4 (what prometheus_client writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@blp.get("/metrics")
def exposition():
    """The server's metrics in Prometheus' text format."""
    return Response(metrics.setup().exposition(), content_type=CONTENT_TYPE)
