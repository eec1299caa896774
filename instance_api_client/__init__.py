"""A Python client for the Instance Management API, installed with the
project: `from instance_api_client import Client, InstanceLogHandler, ApiError`.

It imports nothing of the server (no Flask, peewee or marshmallow): httpx is
its one dependency, and `instance_api_client.mcp_server` adds the `mcp` SDK
(`pip install instance-api[mcp]`). docs/client.md describes it.
"""
from .client import Client
from .handler import InstanceLogHandler
from .transport import ApiConnectionError, ApiError, Page, Resource
from .types import Counts, Event, Instance, Log, LogEntry, Plan, PlanNode, Webhook

__all__ = ["Client", "InstanceLogHandler", "ApiError", "ApiConnectionError", "Page",
           "Resource", "Instance", "Log", "LogEntry", "Plan", "PlanNode", "Counts", "Event",
           "Webhook"]
