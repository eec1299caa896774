"""Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`, the key being the base64 part of a `whsec_`
secret. While a rotated secret is still honoured, each delivery carries
one signature per secret, space separated, as the standard allows."""
import base64
import hashlib
import hmac
import os

PREFIX = "whsec_"
KEY_BYTES = 24


def new_secret():
    return PREFIX + base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_of(secret):
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secrets, message_id, timestamp, body):
    """The webhook-signature header for `body` (bytes) under each secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key_of(secret), signed, hashlib.sha256).digest()
                                 ).decode() for secret in secrets)


def headers(secrets, message_id, timestamp, body):
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secrets, message_id, timestamp, body),
            "Content-Type": "application/json"}
