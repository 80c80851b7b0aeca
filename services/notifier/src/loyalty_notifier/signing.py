"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over "id.timestamp.body".

Secrets look like `whsec_<base64>`; every active secret signs each message, so a receiver can rotate by
accepting the new secret before the old one is dropped. Pure functions: the sender and the tests' receiver
both use them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


class WebhookSecretError(ValueError):
    """A configured secret is not `whsec_<base64>`."""


class WebhookVerificationError(ValueError):
    """A received message's signature or timestamp does not verify."""


def decode_secret(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretError("webhook secrets start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise WebhookSecretError(f"webhook secret is not base64 after 'whsec_': {exc}") from exc
    if len(key) < 24:
        raise WebhookSecretError("webhook secret is shorter than 24 bytes")
    return key


def sign_one(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Value of the `webhook-signature` header: space-separated `v1,<base64>` per active secret."""
    if not secrets:
        raise WebhookSecretError("at least one active secret is needed to sign")
    return " ".join(sign_one(decode_secret(s), msg_id, timestamp, body) for s in secrets)


def verify(
    secret: str,
    *,
    msg_id: str,
    timestamp: str,
    signature: str,
    body: bytes,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """What a receiver does: raise unless one of the signatures matches and the timestamp is fresh."""
    try:
        ts = int(timestamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    if abs(now - ts) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance window")
    expected = sign_one(decode_secret(secret), msg_id, ts, body)
    for candidate in signature.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise WebhookVerificationError("no matching v1 signature")
