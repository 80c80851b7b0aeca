"""The channels' real protocols: SMTP (aiosmtplib), a generic HTTP SMS provider, the Telegram Bot API's
sendMessage, and Standard Webhooks. Each `send` returns a `SendResult`; classifying a failure as transient,
unavailable or permanent is the only decision made here (what to do about it is the domain's)."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import os
import time
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

import aiosmtplib
import httpx

from loyalty_notifier.domain import Channel, FailureKind, TokenBucket, new_bucket, take_token
from loyalty_notifier.program import (
    NotifierProgram,
    SmsChannelConfig,
    SmtpChannelConfig,
    TelegramChannelConfig,
    WebhookEndpointConfig,
)
from loyalty_notifier.signing import signature_header
from loyalty_notifier.store import ClaimedDelivery


@dataclass(frozen=True)
class SendResult:
    ok: bool
    failure: FailureKind | None = None
    detail: str = ""
    status_code: int | None = None


OK = SendResult(True)


def classify_http(status: int) -> FailureKind:
    if status == 429 or status >= 500 or status in (408, 425):
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


class RateLimiter:
    """Per-provider token bucket (domain.take_token) on the monotonic clock, plus a cap on requests in
    flight (httpx's pool bookkeeping grows with the number of waiting requests: 8 in flight sent ~3x more
    webhooks per CPU second than 32 in the benchmark)."""

    def __init__(self, rate_per_second: float, max_in_flight: int = 1_000_000) -> None:
        self._bucket: TokenBucket = new_bucket(rate_per_second, time.monotonic())
        self._lock = asyncio.Lock()
        self.in_flight = asyncio.Semaphore(max_in_flight)

    async def acquire(self) -> None:
        async with self._lock:
            self._bucket, wait = take_token(self._bucket, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


class SmtpPool:
    """A few long-lived SMTP sessions (connect + EHLO + AUTH once, then one MAIL/RCPT/DATA per message):
    a new TCP + SMTP handshake per message costs more than the message itself."""

    def __init__(self, cfg: SmtpChannelConfig, username: str | None, password: str | None) -> None:
        self.cfg = cfg
        self.username = username
        self.password = password
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(cfg.connections)

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.use_tls,
            start_tls=cfg.starttls,
            username=self.username,
            password=self.password,
            timeout=cfg.timeout_s,
        )

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        async with self._slots:
            reused = bool(self._idle)
            client = self._idle.pop() if reused else self._client()
            try:
                if not client.is_connected:
                    await client.connect()
                await client.sendmail(sender, [recipient], message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                client.close()
                if not reused:
                    raise
                # An idle session the server closed meanwhile: one fresh session, then report what happens.
                client = self._client()
                try:
                    await client.connect()
                    await client.sendmail(sender, [recipient], message)
                except BaseException:
                    client.close()
                    raise
            except BaseException:
                client.close()
                raise
            self._idle.append(client)

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(Exception):
                await client.quit()


def _header_value(value: str) -> str:
    """A header value as RFC 5322 text: ASCII as it is (one line), anything else RFC 2047 encoded."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def _qp(text: str) -> str:
    """UTF-8 quoted-printable body (binascii, in C): readable, and what mail filters expect."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii").replace("\n", "\r\n")


def build_email(
    cfg: SmtpChannelConfig, delivery: ClaimedDelivery, *, unsubscribe_url: str, unsubscribe_mailto: str | None
) -> tuple[str, bytes]:
    """(envelope sender, message bytes): multipart/alternative text + HTML in UTF-8 quoted-printable, with
    List-Unsubscribe (+ one-click). Written directly: the stdlib's message objects spent more CPU folding
    headers than the whole SMTP exchange took (the tests parse every message back with the stdlib parser)."""
    content = delivery.content
    name, address = parseaddr(cfg.from_address)
    domain = address.rsplit("@", 1)[-1] or "loyalty.invalid"
    boundary = "=_loyalty_" + delivery.notification_id.replace("-", "")
    targets = [f"<{unsubscribe_url}>"]
    if unsubscribe_mailto:
        targets.insert(0, f"<mailto:{unsubscribe_mailto}?subject=unsubscribe>")
    headers = [
        ("From", formataddr((name, address), charset="utf-8")),
        ("To", delivery.recipient),
        ("Subject", _header_value(content["subject"])),
        # A stable Message-ID per notification: a duplicate (should one ever slip through) is recognisable.
        ("Message-ID", f"<{delivery.notification_id}@{domain}>"),
        ("Date", formatdate(localtime=False)),
        ("MIME-Version", "1.0"),
        ("List-Unsubscribe", ", ".join(targets)),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("X-Loyalty-Notification", delivery.notification_id),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    lines = [f"{k}: {v}" for k, v in headers]
    lines.append("")  # end of the headers
    for subtype, body in (("plain", content["text"]), ("html", content["html"])):
        lines += [
            f"--{boundary}",
            f'Content-Type: text/{subtype}; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            _qp(body).removesuffix("\r\n"),
        ]
    lines += [f"--{boundary}--", ""]
    return address, "\r\n".join(lines).encode("ascii")


class ChannelSenders:
    """Senders for one tenant's configured channels and webhook endpoints."""

    def __init__(
        self, program: NotifierProgram, http: httpx.AsyncClient, environ: dict[str, str] | None = None
    ) -> None:
        self.program = program
        self.http = http
        self.env = dict(os.environ) if environ is None else environ
        ch = program.channels
        self.limits: dict[str, RateLimiter] = {}
        if ch.email is not None:
            self.limits["email"] = RateLimiter(ch.email.rate_per_second)  # sessions are capped by SmtpPool
        if ch.sms is not None:
            self.limits["sms"] = RateLimiter(ch.sms.rate_per_second, ch.sms.max_in_flight)
        if ch.telegram is not None:
            self.limits["telegram"] = RateLimiter(ch.telegram.rate_per_second, ch.telegram.max_in_flight)
        self.smtp = (
            SmtpPool(ch.email, self._secret(ch.email.username_env), self._secret(ch.email.password_env))
            if ch.email is not None
            else None
        )
        self.endpoints: dict[str, WebhookEndpointConfig] = {w.id: w for w in program.webhooks}
        for w in program.webhooks:
            self.limits[f"webhook:{w.id}"] = RateLimiter(w.rate_per_second, w.max_in_flight)

    def _secret(self, name: str | None) -> str | None:
        return self.env.get(name) if name else None

    async def close(self) -> None:
        if self.smtp is not None:
            await self.smtp.close()

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        try:
            if delivery.channel is Channel.WEBHOOK:
                endpoint = self.endpoints.get(delivery.endpoint_id or "")
                if endpoint is None:
                    return SendResult(False, FailureKind.PERMANENT, f"endpoint {delivery.endpoint_id!r} not configured")
                hook_limiter = self.limits[f"webhook:{endpoint.id}"]
                await hook_limiter.acquire()
                async with hook_limiter.in_flight:
                    return await self.send_webhook(endpoint, delivery)
            limiter = self.limits.get(delivery.channel.value)
            if limiter is None:
                return SendResult(False, FailureKind.UNAVAILABLE, f"channel {delivery.channel.value} not configured")
            await limiter.acquire()
            async with limiter.in_flight:
                if delivery.channel is Channel.EMAIL:
                    assert self.program.channels.email is not None
                    return await self.send_email(self.program.channels.email, delivery)
                if delivery.channel is Channel.SMS:
                    assert self.program.channels.sms is not None
                    return await self.send_sms(self.program.channels.sms, delivery)
                assert self.program.channels.telegram is not None
                return await self.send_telegram(self.program.channels.telegram, delivery)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return SendResult(False, FailureKind.UNAVAILABLE, f"connect: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return SendResult(False, FailureKind.TRANSIENT, f"http: {type(exc).__name__}: {exc}")

    async def send_email(self, cfg: SmtpChannelConfig, delivery: ClaimedDelivery) -> SendResult:
        sender, message = build_email(
            cfg,
            delivery,
            unsubscribe_url=delivery.content.get("unsubscribe_url", self.program.unsubscribe_url),
            unsubscribe_mailto=self.program.unsubscribe_mailto,
        )
        assert self.smtp is not None
        try:
            await self.smtp.send(sender, delivery.recipient, message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return SendResult(False, FailureKind.PERMANENT, f"recipient refused: {len(exc.recipients)}")
        except aiosmtplib.SMTPResponseException as exc:
            kind = FailureKind.PERMANENT if 500 <= exc.code < 600 else FailureKind.TRANSIENT
            return SendResult(False, kind, f"SMTP {exc.code}: {exc.message[:200]}", exc.code)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError, ConnectionError, OSError) as exc:
            return SendResult(False, FailureKind.UNAVAILABLE, f"SMTP unreachable: {type(exc).__name__}")
        except (aiosmtplib.SMTPException, TimeoutError) as exc:
            return SendResult(False, FailureKind.TRANSIENT, f"SMTP: {type(exc).__name__}")
        return OK

    async def send_sms(self, cfg: SmsChannelConfig, delivery: ClaimedDelivery) -> SendResult:
        headers = {"Idempotency-Key": delivery.notification_id}
        token = self._secret(cfg.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.http.post(
            cfg.url,
            json={"to": delivery.recipient, "from": cfg.sender_id, "text": delivery.content["sms"]},
            headers=headers,
            timeout=cfg.timeout_s,
        )
        if response.is_success:
            return SendResult(True, status_code=response.status_code)
        code = response.status_code
        return SendResult(False, classify_http(code), f"SMS provider HTTP {code}", code)

    async def send_telegram(self, cfg: TelegramChannelConfig, delivery: ClaimedDelivery) -> SendResult:
        token = self._secret(cfg.token_env) or ""
        response = await self.http.post(
            f"{cfg.base_url.rstrip('/')}/bot{token}/sendMessage",
            json={"chat_id": delivery.recipient, "text": delivery.content["text"], "disable_web_page_preview": True},
            timeout=cfg.timeout_s,
        )
        code = response.status_code
        try:
            ok = bool(response.json().get("ok"))
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if response.is_success and ok:
            return SendResult(True, status_code=code)
        return SendResult(
            False, classify_http(code) if code != 200 else FailureKind.PERMANENT, f"Telegram HTTP {code}", code
        )

    async def send_webhook(self, endpoint: WebhookEndpointConfig, delivery: ClaimedDelivery) -> SendResult:
        body = delivery.content["body"].encode()
        secrets = [self.env.get(name, "") for name in endpoint.secret_envs]
        secrets = [s for s in secrets if s]
        if not secrets:
            return SendResult(False, FailureKind.PERMANENT, "no webhook secret in the environment")
        msg_id = delivery.content["webhook_id"]
        timestamp = int(time.time())  # wall clock: receivers check freshness against their own clock
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        }
        response = await self.http.post(endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_s)
        code = response.status_code
        if response.is_success:
            return SendResult(True, status_code=code)
        # Standard Webhooks: 410 Gone means "stop sending"; everything else non-2xx is retried.
        return SendResult(False, FailureKind.PERMANENT if code == 410 else FailureKind.TRANSIENT, f"HTTP {code}", code)
