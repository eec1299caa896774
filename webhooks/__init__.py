"""Webhooks (CONTRACT 4.4, 4.7): the fleet's events POSTed to the URLs
clients register, signed the Standard Webhooks way.

- store: the webhook rows, their secrets, delivery positions and state;
- signing: the signature headers;
- targets: where a URL may lead (resolved, checked, then connected to);
- delivery: the background job that delivers, one process per webhook at
  a time (a lease on its row).

The routes are routes/webhooks.py; the events themselves feeds.py.
"""
