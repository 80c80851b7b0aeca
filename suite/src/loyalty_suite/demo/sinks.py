"""Local stand-ins for every outgoing channel, capturing each message to a JSON-lines file per sink.

- SMTP (aiosmtpd, in the caller's event loop): each message parsed into to / subject / text / html / headers.
- One plain-asyncio HTTP/1.1 server for the HTTP channels, with the paths and payloads the notifier sends
  (services/notifier/src/loyalty_notifier/channels.py):
  - SMS provider: ``POST /sms/v1/messages`` JSON ``{to, from, text}``, ``Authorization: Bearer <token>``,
    ``Idempotency-Key: <notification id>``;
  - Telegram Bot API: ``POST /telegram/bot<token>/sendMessage`` JSON ``{chat_id, text, ...}``, answers
    ``{"ok": true, "result": {...}}`` (the notifier's ``base_url`` is ``http://host:port/telegram``);
  - partner webhooks: ``POST /webhooks/<endpoint id>``, verified per Standard Webhooks (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``) with the notifier's own `verify`; a bad signature gets 401
    and lands in ``webhook-rejected.jsonl``, never in ``webhook.jsonl``.

Files (in ``<run dir>/sinks/``): ``email.jsonl``, ``sms.jsonl``, ``telegram.jsonl``, ``webhook.jsonl``,
``webhook-rejected.jsonl``; every line has ``sink`` and ``arrived_at`` (epoch seconds, wall clock).
Duplicates are kept on purpose: a message sent twice shows up twice.

`write_demo_programs()` copies the program files with the notifier's channels pointed at these sinks, and
`SinkEndpoints.notifier_env()` gives the tokens and webhook secret the notifier process must get.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.header
import email.message
import email.policy
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session
from loyalty_notifier.signing import WebhookSecretError, WebhookVerificationError, verify

SINKS = ("email", "sms", "telegram", "webhook")
REJECTED_WEBHOOKS = "webhook-rejected"
MAX_BODY_BYTES = 1_000_000
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Payload Too Large"}


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class SinkEndpoints:
    """Where the sinks listen and the credentials they expect."""

    host: str
    smtp_port: int
    http_port: int
    sms_token: str
    telegram_token: str
    webhook_secret: str

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def sms_url(self) -> str:
        return f"{self.http_base}/sms/v1/messages"

    @property
    def telegram_base_url(self) -> str:
        return f"{self.http_base}/telegram"

    def webhook_url(self, endpoint_id: str) -> str:
        return f"{self.http_base}/webhooks/{endpoint_id}"

    def notifier_env(self, program_file: Path | None = None) -> dict[str, str]:
        """Environment for the notifier process: the token / secret variables the program names.

        Without a program file it uses acme-diy's names (ACME_DIY_SMS_TOKEN, ACME_DIY_TELEGRAM_TOKEN,
        ACME_DIY_CRM_WEBHOOK_SECRET).
        """
        if program_file is None:
            return {"ACME_DIY_SMS_TOKEN": self.sms_token, "ACME_DIY_TELEGRAM_TOKEN": self.telegram_token,
                    "ACME_DIY_CRM_WEBHOOK_SECRET": self.webhook_secret}
        notifier = (yaml.safe_load(program_file.read_text()) or {}).get("notifier") or {}
        channels = notifier.get("channels") or {}
        env: dict[str, str] = {}
        if (channels.get("sms") or {}).get("token_env"):
            env[channels["sms"]["token_env"]] = self.sms_token
        if (channels.get("telegram") or {}).get("token_env"):
            env[channels["telegram"]["token_env"]] = self.telegram_token
        for hook in notifier.get("webhooks") or []:
            for name in hook.get("secret_envs") or []:
                env[name] = self.webhook_secret
        return env


class SinkStore:
    """Appends captured messages to one JSON-lines file per sink and counts them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.counts: Counter[str] = Counter()
        self._files: dict[str, Any] = {}

    def path(self, sink: str) -> Path:
        return self.directory / f"{sink}.jsonl"

    def record(self, sink: str, payload: dict[str, Any]) -> dict[str, Any]:
        entry = {"sink": sink, "arrived_at": time.time(), **payload}
        handle = self._files.get(sink)
        if handle is None:
            handle = self._files[sink] = self.path(sink).open("a", encoding="utf-8")
        handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        handle.flush()
        self.counts[sink] += 1
        return entry

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def read_sink(directory: Path, sink: str) -> list[dict[str, Any]]:
    """Captured messages of one sink, in arrival order ([] when nothing arrived)."""
    path = directory / f"{sink}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _header_text(value: str | None) -> str:
    """An RFC 2047 header (e.g. a Russian subject) as text."""
    if not value:
        return ""
    return str(email.header.make_header(email.header.decode_header(value))).strip()


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return payload.decode(part.get_content_charset() or "utf-8", errors="replace")


def parse_email(raw: bytes) -> dict[str, Any]:
    """The parts of a MIME message a reader cares about.

    compat32 parsing with explicit header decoding: the modern policy builds a parsed object per header and made
    the sink ~5x slower than the notifier sends.
    """
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    text: str | None = None
    html: str | None = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        if part.get_content_type() == "text/plain" and text is None:
            text = _part_text(part)
        elif part.get_content_type() == "text/html" and html is None:
            html = _part_text(part)
    return {
        "from": _header_text(message.get("From")),
        "to": _header_text(message.get("To")),
        "subject": _header_text(message.get("Subject")),
        "message_id": str(message.get("Message-ID", "")).strip(),
        "notification_id": str(message.get("X-Loyalty-Notification", "")).strip() or None,
        "headers": {k: _header_text(v) for k, v in message.items()},
        "text": text,
        "html": html,
    }


class _SmtpHandler:
    def __init__(self, store: SinkStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # aiosmtpd hook
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            parsed = parse_email(raw)
        except Exception as exc:  # a message we cannot parse is still captured, with why
            parsed = {"parse_error": f"{type(exc).__name__}: {exc}", "raw": raw.decode(errors="replace")}
        self.store.record("email", {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos), **parsed})
        return "250 Message accepted for delivery"


@dataclass
class _Response:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


class Sinks:
    """All local sinks; `async with Sinks(run_dir) as endpoints:` or `start()` / `stop()`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        host: str = "127.0.0.1",
        smtp_port: int = 0,
        http_port: int = 0,
        sms_token: str | None = None,
        telegram_token: str | None = None,
        webhook_secrets: list[str] | None = None,
    ) -> None:
        self.store = SinkStore(Path(run_dir) / "sinks")
        self.host = host
        self._smtp_port = smtp_port
        self._http_port = http_port
        self.sms_token = sms_token or secrets.token_urlsafe(24)
        self.telegram_token = telegram_token or f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(24)}"
        self.webhook_secrets = webhook_secrets or [new_webhook_secret()]
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self.endpoints: SinkEndpoints | None = None

    @property
    def directory(self) -> Path:
        return self.store.directory

    def counts(self) -> dict[str, int]:
        return {sink: self.store.counts.get(sink, 0) for sink in (*SINKS, REJECTED_WEBHOOKS)}

    async def start(self) -> SinkEndpoints:
        loop = asyncio.get_running_loop()
        handler = _SmtpHandler(self.store)
        smtp = await loop.create_server(
            lambda: SMTP(handler, enable_SMTPUTF8=True, hostname="loyalty-demo-sink", data_size_limit=10_000_000),
            self.host, self._smtp_port,
        )
        http = await asyncio.start_server(self._serve_http, self.host, self._http_port)
        self._servers = [smtp, http]
        self.endpoints = SinkEndpoints(
            host=self.host,
            smtp_port=smtp.sockets[0].getsockname()[1],
            http_port=http.sockets[0].getsockname()[1],
            sms_token=self.sms_token,
            telegram_token=self.telegram_token,
            webhook_secret=self.webhook_secrets[0],
        )
        return self.endpoints

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._connections):  # idle keep-alive connections: EOF ends their loops
            writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        self.store.close()

    async def __aenter__(self) -> SinkEndpoints:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP/1.1 with keep-alive and Content-Length bodies (what httpx sends)

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                parts = request_line.decode("latin-1").split()
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if len(parts) != 3:
                    await self._respond(writer, _Response(400, {"error": "malformed request line"}), close=True)
                    break
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._respond(writer, _Response(411, {"error": "send a Content-Length body"}), close=True)
                    break
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY_BYTES:
                    await self._respond(writer, _Response(413, {"error": "body too large"}), close=True)
                    break
                body = await reader.readexactly(length) if length else b""
                response = self.route(parts[0].upper(), parts[1], headers, body)
                close = headers.get("connection", "").lower() == "close"
                await self._respond(writer, response, close=close)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, response: _Response, *, close: bool) -> None:
        payload = json.dumps(response.body).encode()
        head = (
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()

    def route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response:
        path = target.split("?", 1)[0]
        if method != "POST":
            return _Response(405, {"error": "only POST is served"})
        if path == "/sms/v1/messages":
            return self._sms(headers, body)
        if path.startswith("/telegram/bot") and path.endswith("/sendMessage"):
            token = path[len("/telegram/bot"):-len("/sendMessage")]
            return self._telegram(token, body)
        if path.startswith("/webhooks/"):
            return self._webhook(path[len("/webhooks/"):], headers, body)
        return _Response(404, {"error": f"no sink at {path}"})

    def _sms(self, headers: dict[str, str], body: bytes) -> _Response:
        if headers.get("authorization") != f"Bearer {self.sms_token}":
            return _Response(401, {"error": "missing or wrong bearer token"})
        try:
            data = json.loads(body)
            to, text = str(data["to"]), str(data["text"])
        except (ValueError, KeyError, TypeError):
            return _Response(400, {"error": "expected JSON {to, from, text}"})
        entry = self.store.record("sms", {"to": to, "from": data.get("from"), "text": text,
                                          "notification_id": headers.get("idempotency-key")})
        return _Response(200, {"id": f"sms-{self.store.counts['sms']}", "status": "queued",
                               "received_at": entry["arrived_at"]})

    def _telegram(self, token: str, body: bytes) -> _Response:
        if token != self.telegram_token:
            return _Response(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        try:
            data = json.loads(body)
            chat_id, text = str(data["chat_id"]), str(data["text"])
        except (ValueError, KeyError, TypeError):
            return _Response(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id and text"})
        self.store.record("telegram", {"chat_id": chat_id, "text": text})
        message_id = self.store.counts["telegram"]
        return _Response(200, {"ok": True, "result": {"message_id": message_id, "chat": {"id": chat_id},
                                                      "date": int(time.time()), "text": text}})

    def _webhook(self, endpoint_id: str, headers: dict[str, str], body: bytes) -> _Response:
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not (msg_id and timestamp and signature):
            reason = "missing webhook-id, webhook-timestamp or webhook-signature"
            self.store.record(REJECTED_WEBHOOKS, {"endpoint": endpoint_id, "reason": reason})
            return _Response(400, {"error": reason})
        failure = "no secret configured"
        for secret in self.webhook_secrets:
            try:
                verify(secret, msg_id=msg_id, timestamp=timestamp, signature=signature, body=body,
                       now=int(time.time()))
            except (WebhookVerificationError, WebhookSecretError) as exc:
                failure = str(exc)
                continue
            try:
                payload: Any = json.loads(body)
            except ValueError:
                payload = {"raw": body.decode(errors="replace")}
            self.store.record("webhook", {
                "endpoint": endpoint_id, "webhook_id": msg_id, "webhook_timestamp": int(timestamp),
                "type": payload.get("type") if isinstance(payload, dict) else None, "payload": payload,
            })
            return _Response(200, {"received": msg_id})
        self.store.record(REJECTED_WEBHOOKS, {"endpoint": endpoint_id, "webhook_id": msg_id, "reason": failure})
        return _Response(401, {"error": failure})


def write_demo_programs(source_dir: Path, dest_dir: Path, endpoints: SinkEndpoints) -> Path:
    """Copy every program file with the notifier's channels pointed at the local sinks.

    Email goes to the local SMTP sink without STARTTLS or login (the credential variables are dropped), SMS and
    Telegram to the HTTP sink, every webhook endpoint to ``/webhooks/<id>``; templates stay where they are
    (``templates_dir`` becomes absolute). Returns `dest_dir`.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(source_dir).glob("*.yaml")):
        program = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        notifier = program.get("notifier")
        if isinstance(notifier, dict):
            if notifier.get("templates_dir"):
                notifier["templates_dir"] = str((path.parent / notifier["templates_dir"]).resolve())
            channels = notifier.setdefault("channels", {})
            if "email" in channels:
                email_cfg = channels["email"]
                email_cfg.update({"host": endpoints.host, "port": endpoints.smtp_port, "starttls": False,
                                  "use_tls": False})
                email_cfg.pop("username_env", None)
                email_cfg.pop("password_env", None)
            if "sms" in channels:
                channels["sms"]["url"] = endpoints.sms_url
            if "telegram" in channels:
                channels["telegram"]["base_url"] = endpoints.telegram_base_url
            for hook in notifier.get("webhooks") or []:
                hook["url"] = endpoints.webhook_url(hook["id"])
        (dest_dir / path.name).write_text(
            "# Generated by loyalty_suite.demo.sinks.write_demo_programs: channels point at the local sinks.\n"
            + yaml.safe_dump(program, allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
    return dest_dir
