"""One blueprint per resource; `common` holds what they share."""
from routes import feeds, health, instances, logs, plans, webhooks

BLUEPRINTS = (instances.blp, logs.blp, plans.blp, feeds.logs_blp, feeds.events_blp,
              webhooks.blp, health.blp)
