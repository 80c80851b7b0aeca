"""Real local servers standing in for the notifier's providers: an SMTP server (aiosmtpd) that parses what
it receives, and one HTTP server (uvicorn) for the SMS provider, the Telegram Bot API and partner webhook
receivers that verify Standard Webhooks signatures. Failures are injected per route."""

from __future__ import annotations

import asyncio
import contextlib
import email
import socket
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import uvicorn
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response
from loyalty_notifier.signing import WebhookVerificationError, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    at: float  # time.time() of arrival (latency measurements)
    data: Any


class SmtpSink:
    """aiosmtpd in a thread; every message is parsed with the stdlib email parser."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.original_content, policy=default_policy)
                sink.messages.append(Received(time.time(), (list(envelope.rcpt_tos), message)))
                return "250 Message accepted for delivery"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        return [m for _, (rcpts, m) in ((r.at, r.data) for r in self.messages) if address in rcpts]


@dataclass
class HttpFakes:
    """The SMS provider, the Telegram Bot API and webhook receivers, on one local uvicorn server."""

    webhook_secrets: dict[str, str]
    sms: list[Received] = field(default_factory=list)
    telegram: list[Received] = field(default_factory=list)
    webhooks: list[Received] = field(default_factory=list)
    # route ("sms", "telegram", "hook:<name>") → status codes to answer before answering success
    failures: dict[str, list[int]] = field(default_factory=dict)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    def _fail(self, route: str) -> int | None:
        queue = self.failures.get(route)
        return queue.pop(0) if queue else None

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.post("/sms")
        async def sms(request: Request) -> Response:
            body = await request.json()
            status = self._fail("sms")
            self.sms.append(
                Received(
                    time.time(), {"body": body, "status": status or 200, "auth": request.headers.get("authorization")}
                )
            )
            if status:
                return Response(status_code=status)
            return Response('{"id": "sms-1"}', media_type="application/json")

        @api.post("/bot{token}/sendMessage")
        async def telegram(token: str, request: Request) -> Response:
            body = await request.json()
            status = self._fail("telegram")
            self.telegram.append(Received(time.time(), {"token": token, "body": body, "status": status or 200}))
            if status:
                return Response('{"ok": false}', status_code=status, media_type="application/json")
            return Response('{"ok": true, "result": {"message_id": 1}}', media_type="application/json")

        @api.post("/hooks/{name}")
        async def hook(name: str, request: Request) -> Response:
            raw = await request.body()
            verified = True
            try:
                verify(
                    self.webhook_secrets[name],
                    msg_id=request.headers["webhook-id"],
                    timestamp=request.headers["webhook-timestamp"],
                    signature=request.headers["webhook-signature"],
                    body=raw,
                    now=int(time.time()),
                )
            except (WebhookVerificationError, KeyError):
                verified = False
            status = self._fail(f"hook:{name}") if verified else 401
            self.webhooks.append(
                Received(
                    time.time(),
                    {
                        "name": name,
                        "id": request.headers.get("webhook-id"),
                        "body": raw,
                        "verified": verified,
                        "status": status or 204,
                    },
                )
            )
            return Response(status_code=status or 204)

        return api

    async def start(self) -> HttpFakes:
        self.port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake provider server did not start")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
