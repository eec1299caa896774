"""One blueprint per resource; `common` holds what they share."""
from routes import health, instances, logs, plans

BLUEPRINTS = (instances.blp, logs.blp, plans.blp, health.blp)
