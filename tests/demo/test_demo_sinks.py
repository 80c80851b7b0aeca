"""The local sinks capture what the notifier's real senders (aiosmtplib, httpx) send, and refuse bad webhooks."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from loyalty_notifier.channels import ChannelSenders
from loyalty_notifier.config import load_tenants
from loyalty_notifier.domain import Category, Channel
from loyalty_notifier.signing import signature_header
from loyalty_notifier.store import ClaimedDelivery
from loyalty_suite.demo.sinks import Sinks, new_webhook_secret, read_sink, write_demo_programs

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"


def delivery(channel: Channel, recipient: str, content: dict[str, str], *, endpoint: str | None = None,
             notification_id: str = "n-1") -> ClaimedDelivery:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    return ClaimedDelivery(
        id=1, tenant="acme-diy", customer_id="c-00001", notification_id=notification_id, source_event_id="e-1",
        source_event_type="loyalty.TierChanged.v1", channel=channel, recipient=recipient, endpoint_id=endpoint,
        category=Category.SERVICE, template="tier_changed", locale="ru", time_zone="Europe/Berlin",
        content=content, fallbacks=(), journey_step=None, due_at=now, attempts=1, source_time=now, traceparent=None,
    )


async def test_notifier_senders_reach_every_sink(tmp_path: Path) -> None:
    async with Sinks(tmp_path) as endpoints:
        programs = write_demo_programs(PROGRAMS, tmp_path / "programs", endpoints)
        tenant = load_tenants(programs)["acme-diy"]  # the rewritten file still validates, templates included
        async with httpx.AsyncClient() as http:
            senders = ChannelSenders(tenant.program, http, environ=endpoints.notifier_env())
            mail = await senders.send(delivery(
                Channel.EMAIL, "anna@example.com",
                {"subject": "Вы теперь Мастер", "text": "Привет, Анна! Ранний доступ.",
                 "html": "<p>Привет, <b>Анна</b></p>"},
                notification_id="n-mail",
            ))
            sms = await senders.send(delivery(Channel.SMS, "+4915112345678", {"sms": "You are a Maker now"},
                                              notification_id="n-sms"))
            telegram = await senders.send(delivery(Channel.TELEGRAM, "123456789", {"text": "Maker!"}))
            hook = await senders.send(delivery(
                Channel.WEBHOOK, "crm", {"body": json.dumps({"type": "loyalty.DetractorCaseOpened.v1", "data": {}}),
                                         "webhook_id": "msg_1"}, endpoint="crm",
            ))
        assert (mail.ok, sms.ok, telegram.ok, hook.ok) == (True, True, True, True), (mail, sms, telegram, hook)
        sinks_dir = tmp_path / "sinks"
        [email] = read_sink(sinks_dir, "email")
        assert email["to"] == "anna@example.com"
        assert email["subject"] == "Вы теперь Мастер"
        assert "Ранний доступ" in email["text"] and "<b>Анна</b>" in email["html"]
        assert email["notification_id"] == "n-mail"
        assert "List-Unsubscribe" in email["headers"]
        [text] = read_sink(sinks_dir, "sms")
        assert (text["to"], text["text"], text["notification_id"]) == ("+4915112345678", "You are a Maker now", "n-sms")
        [chat] = read_sink(sinks_dir, "telegram")
        assert (chat["chat_id"], chat["text"]) == ("123456789", "Maker!")
        [partner] = read_sink(sinks_dir, "webhook")
        assert (partner["endpoint"], partner["webhook_id"], partner["type"]) == (
            "crm", "msg_1", "loyalty.DetractorCaseOpened.v1")


async def test_raw_smtp_message_is_parsed(tmp_path: Path) -> None:
    async with Sinks(tmp_path) as endpoints:
        raw = (
            "From: shop@acme.example\r\nTo: a@example.com, b@example.com\r\nSubject: Plain one\r\n"
            "X-Loyalty-Notification: n-raw\r\n\r\nJust text.\r\n"
        )
        await aiosmtplib.send(raw, sender="shop@acme.example", recipients=["a@example.com", "b@example.com"],
                              hostname=endpoints.host, port=endpoints.smtp_port)
    [email] = read_sink(tmp_path / "sinks", "email")
    assert email["rcpt_tos"] == ["a@example.com", "b@example.com"]
    assert email["subject"] == "Plain one" and email["text"].strip() == "Just text." and email["html"] is None
    assert email["notification_id"] == "n-raw"


async def test_bad_webhook_signature_is_rejected_and_not_captured(tmp_path: Path) -> None:
    sinks = Sinks(tmp_path)
    endpoints = await sinks.start()
    try:
        body = b'{"type":"loyalty.CustomerAtRisk.v1","data":{}}'
        now = int(time.time())
        async with httpx.AsyncClient() as http:
            forged = await http.post(endpoints.webhook_url("crm"), content=body, headers={
                "webhook-id": "msg_forged", "webhook-timestamp": str(now),
                "webhook-signature": signature_header([new_webhook_secret()], "msg_forged", now, body),
            })
            stale = await http.post(endpoints.webhook_url("crm"), content=body, headers={
                "webhook-id": "msg_old", "webhook-timestamp": str(now - 3600),
                "webhook-signature": signature_header([endpoints.webhook_secret], "msg_old", now - 3600, body),
            })
            unsigned = await http.post(endpoints.webhook_url("crm"), content=body)
            good = await http.post(endpoints.webhook_url("crm"), content=body, headers={
                "webhook-id": "msg_ok", "webhook-timestamp": str(now),
                "webhook-signature": signature_header([endpoints.webhook_secret], "msg_ok", now, body),
            })
            wrong_bot = await http.post(f"{endpoints.telegram_base_url}/bot123:nope/sendMessage",
                                        json={"chat_id": "1", "text": "x"})
            wrong_sms = await http.post(endpoints.sms_url, json={"to": "+49151", "text": "x"},
                                        headers={"Authorization": "Bearer nope"})
        assert forged.status_code == 401 and "signature" in forged.json()["error"]
        assert stale.status_code == 401 and "tolerance" in stale.json()["error"]
        assert unsigned.status_code == 400
        assert good.status_code == 200
        assert wrong_bot.status_code == 401 and wrong_bot.json()["ok"] is False
        assert wrong_sms.status_code == 401
        assert sinks.counts() == {"email": 0, "sms": 0, "telegram": 0, "webhook": 1, "webhook-rejected": 3}
        assert [m["webhook_id"] for m in read_sink(tmp_path / "sinks", "webhook")] == ["msg_ok"]
    finally:
        await sinks.stop()


@pytest.mark.parametrize("path", ["/nowhere", "/telegram/botX/getUpdates"])
async def test_unknown_paths_get_404(tmp_path: Path, path: str) -> None:
    async with Sinks(tmp_path) as endpoints, httpx.AsyncClient() as http:
        response = await http.post(endpoints.http_base + path, json={})
    assert response.status_code == 404
