"""The notifier section, its templates and the preview: errors name the file, the path or line, the reason."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_kit.programs import ProgramFileInvalid
from loyalty_notifier.config import load_tenants, missing_secrets, preview
from loyalty_notifier.signing import (
    WebhookSecretError,
    WebhookVerificationError,
    decode_secret,
    signature_header,
    verify,
)
from loyalty_notifier.templates import format_money

REPO = Path(__file__).resolve().parents[2]
HEADER = {
    "tenant": "shop",
    "display_name": "Shop & Co",
    "default_locale": "en",
    "locales": ["en", "ru"],
    "timezone": "Europe/Berlin",
    "currency": "EUR",
    "api_keys": [],
}


def section(**overrides: object) -> dict:
    base: dict = {
        "templates_dir": "tpl",
        "footer": {"en": "Sent by a robot", "ru": "Отправлено роботом"},
        "channels": {"email": {"host": "127.0.0.1", "port": 2525, "from_address": "shop@example.com"}},
        "routes": {"TierChanged": {"template": "tier", "category": "service", "channels": ["email"]}},
    }
    base.update(overrides)
    return base


def write_program(root: Path, notifier: dict, templates: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "shop.yaml").write_text(yaml.safe_dump({**HEADER, "notifier": notifier}, allow_unicode=True))
    default = {
        "en/tier.subject.j2": "Hi {{ customer.first_name }}",
        "en/tier.text.j2": "You are {{ event.to_tier }}.\n{{ footer }}",
        "ru/tier.subject.j2": "Привет, {{ customer.first_name }}",
        "ru/tier.text.j2": "Вы {{ event.to_tier }}.\n{{ footer }}",
    }
    default.update(templates or {})
    for rel, text in default.items():
        path = root / "tpl" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ProgramFileInvalid) as info:
        load_tenants(root)
    return [str(e) for e in info.value.errors]


def test_the_example_program_loads_and_previews_in_both_locales() -> None:
    tenants = load_tenants(REPO / "programs")
    acme = tenants["acme-diy"]
    assert set(acme.routes) >= {"TierChanged", "SurveyRequested", "LoopClosed"}
    assert "onboarding" in acme.journeys
    en = preview(REPO / "programs", "acme-diy", "SurveyRequested", "en")
    ru = preview(REPO / "programs", "acme-diy", "SurveyRequested", "ru")
    assert "https://" in en.sms and "robot" in en.text.lower()
    assert "Здравствуйте" in ru.text
    step = preview(REPO / "programs", "acme-diy", "journey:onboarding:day0_thanks", "ru")
    assert "DRILL-18V" in step.text


def test_preview_rejects_unknown_names_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="routed"):
        preview(REPO / "programs", "acme-diy", "PurchaseRefunded", "en")
    with pytest.raises(KeyError, match="locale"):
        preview(REPO / "programs", "acme-diy", "TierChanged", "de")


def test_valid_minimal_program(tmp_path: Path) -> None:
    tenants = load_tenants(write_program(tmp_path, section()))
    message = tenants["shop"].render(
        "tier",
        "ru",
        event_type="TierChanged",
        event={"to_tier": "guru"},
        customer={"id": "c1", "first_name": "Anna"},
        category=tenants["shop"].routes["TierChanged"].category,
    )
    assert message.subject == "Привет, Anna" and message.text == "Вы guru.\nОтправлено роботом"
    assert message.html.startswith("<p>Вы guru.<br>")


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    root = write_program(
        tmp_path, section(), {"en/tier.text.j2": "line one\nYou are {{ event.to_tier }}\n{{ customer.nickname }}\n"}
    )
    errors = errors_of(root)
    assert len(errors) == 1
    assert errors[0].startswith(str(tmp_path / "tpl" / "en" / "tier.text.j2") + ": line 3:")
    assert "nickname" in errors[0] and "sample TierChanged" in errors[0]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    root = write_program(tmp_path, section(), {"ru/tier.subject.j2": "ok\n{% if customer.first_name %}\nno end"})
    errors = errors_of(root)
    assert any("ru/tier.subject.j2: line 3: syntax error" in e for e in errors), errors


def test_missing_template_part_and_folder(tmp_path: Path) -> None:
    (root := write_program(tmp_path, section()))
    (root / "tpl" / "ru" / "tier.text.j2").unlink()
    assert any("ru/tier.text.j2" in e and "missing" in e for e in errors_of(root))
    other = write_program(tmp_path / "b", section(templates_dir="nowhere"))
    assert any("notifier.templates_dir" in e and "does not exist" in e for e in errors_of(other))


def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path) -> None:
    root = write_program(tmp_path, section(), {"en/tier.text.j2": "{{ event.__class__.__mro__ }}"})
    errors = errors_of(root)
    assert any("en/tier.text.j2" in e for e in errors), errors


@pytest.mark.parametrize(
    ("notifier", "path", "reason"),
    [
        (
            section(routes={"TierChanged": {"template": "tier", "category": "service", "channels": ["sms"]}}),
            "notifier.routes.TierChanged.channels[0]",
            "'sms' is not configured",
        ),
        (
            section(routes={"NoSuchEvent": {"template": "tier", "category": "service", "channels": ["email"]}}),
            "notifier.routes.NoSuchEvent",
            "unknown event type",
        ),
        (
            section(routes={"TierChanged": {"template": "Tier!", "category": "service", "channels": ["email"]}}),
            "notifier.routes.TierChanged.template",
            "lower_snake_case",
        ),
        (
            section(routes={"TierChanged": {"template": "tier", "category": "gossip", "channels": ["email"]}}),
            "notifier.routes.TierChanged.category",
            "Input should be",
        ),
        (section(quiet_hours={"start": "21:00", "end": "21:00"}), "notifier.quiet_hours", "must differ"),
        (
            section(contact_budget={"max_messages": 2, "per_days": 7, "marketing_reserve": 2}),
            "notifier.contact_budget",
            "marketing_reserve",
        ),
        (
            section(frequency_caps=[{"category": "transactional", "max_messages": 1, "per_days": 1}]),
            "notifier.frequency_caps[0].category",
            "never capped",
        ),
        (section(retry={"schedule_seconds": [5, 0]}), "notifier.retry.schedule_seconds", "> 0"),
        (
            section(
                webhooks=[{"id": "crm", "url": "http://x", "secret_envs": ["lower"], "event_types": ["TierChanged"]}]
            ),
            "notifier.webhooks[0].secret_envs",
            "UPPER_SNAKE",
        ),
        (
            section(webhooks=[{"id": "crm", "url": "http://x", "secret_envs": ["S"], "event_types": ["Nope"]}]),
            "notifier.webhooks[0].event_types[0]",
            "unknown event type 'Nope'",
        ),
        (section(footer={"de": "Roboter"}), "notifier.footer.de", "not in the program's locales"),
        (
            section(
                journeys={
                    "j": {
                        "channels": ["email"],
                        "paths": {"default": [], "x": []},
                        "branches": [{"when_categories": ["a"], "to_path": "y"}],
                    }
                }
            ),
            "notifier.journeys.j.branches[0].to_path",
            "unknown path 'y'",
        ),
        (
            section(
                journeys={
                    "j": {
                        "channels": ["email"],
                        "max_days": 10,
                        "paths": {"default": [{"step": "s", "after_days": 11, "template": "tier"}]},
                    }
                }
            ),
            "notifier.journeys.j.paths.default[0].after_days",
            "after the journey's end",
        ),
        (
            section(journeys={"j": {"channels": ["telegram"], "paths": {"default": []}}}),
            "notifier.journeys.j.channels[0]",
            "'telegram' is not configured",
        ),
        (section(unknown_key=1), "notifier.unknown_key", "Extra inputs"),
    ],
)
def test_section_errors_name_file_path_and_reason(tmp_path: Path, notifier: dict, path: str, reason: str) -> None:
    errors = errors_of(write_program(tmp_path, notifier))
    file = str(tmp_path / "shop.yaml")
    assert any(e.startswith(f"{file}: {path}:") and reason in e for e in errors), errors


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    notifier = section(
        routes={"TierChanged": {"template": "tier", "category": "service", "channels": ["sms", "telegram"]}},
        footer={"de": "x"},
    )
    errors = errors_of(write_program(tmp_path, notifier))
    assert len(errors) >= 2


def test_missing_secrets_are_named(tmp_path: Path) -> None:
    hooks = [
        {"id": "crm", "url": "http://x", "secret_envs": ["SHOP_HOOK_A", "SHOP_HOOK_B"], "event_types": ["TierChanged"]}
    ]
    tenants = load_tenants(write_program(tmp_path, section(webhooks=hooks)))
    problems = missing_secrets(tenants, {"SHOP_HOOK_A": "whsec_x"})
    assert [p.path for p in problems] == ["notifier.webhooks[0].secret_envs[1]"]


def test_money_filter_uses_integer_minor_units() -> None:
    assert format_money({"amount_minor": 1250, "currency": "EUR"}) == "12.50 EUR"
    assert format_money({"amount_minor": -5, "currency": "RUB"}) == "-0.05 RUB"
    assert format_money(None) == ""


# ---------------------------------------------------------------------------------------------- signing

# Test vector from the Standard Webhooks specification's reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR = {"msg_id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "timestamp": 1614265330, "body": b'{"test": 2432232314}'}


def test_signature_matches_the_spec_vector() -> None:
    header = signature_header([VECTOR_SECRET], VECTOR["msg_id"], VECTOR["timestamp"], VECTOR["body"])
    assert header == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_signs_with_every_active_secret() -> None:
    new = "whsec_" + base64.b64encode(b"n" * 32).decode()
    header = signature_header([VECTOR_SECRET, new], "msg_1", 1_700_000_000, b"{}")
    assert len(header.split(" ")) == 2
    for secret in (VECTOR_SECRET, new):
        verify(secret, msg_id="msg_1", timestamp="1700000000", signature=header, body=b"{}", now=1_700_000_010)


def test_verification_rejects_tampering_and_stale_messages() -> None:
    header = signature_header([VECTOR_SECRET], "msg_1", 1_700_000_000, b"{}")
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(VECTOR_SECRET, msg_id="msg_1", timestamp="1700000000", signature=header, body=b"{ }", now=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(VECTOR_SECRET, msg_id="msg_1", timestamp="1700000000", signature=header, body=b"{}", now=1_700_009_000)


@pytest.mark.parametrize("secret", ["nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets_are_typed_errors(secret: str) -> None:
    with pytest.raises(WebhookSecretError):
        decode_secret(secret)


@given(
    body=st.binary(max_size=2000),
    msg_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=40),
    keys=st.lists(st.binary(min_size=24, max_size=64), min_size=1, max_size=3),
    tampered=st.integers(min_value=0, max_value=1999),
)
@settings(max_examples=100)
def test_any_active_secret_verifies_and_any_change_breaks_it(
    body: bytes, msg_id: str, keys: list[bytes], tampered: int
) -> None:
    secrets = ["whsec_" + base64.b64encode(k).decode() for k in keys]
    header = signature_header(secrets, msg_id, 1_700_000_000, body)
    for secret in secrets:
        verify(secret, msg_id=msg_id, timestamp="1700000000", signature=header, body=body, now=1_700_000_000)
    if body:
        i = tampered % len(body)
        changed = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        with pytest.raises(WebhookVerificationError):
            verify(secrets[0], msg_id=msg_id, timestamp="1700000000", signature=header, body=changed, now=1_700_000_000)


def test_preview_command_prints_the_message_and_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    from loyalty_notifier.__main__ import main

    with pytest.raises(SystemExit) as ok:
        main(
            [
                "preview",
                "--tenant",
                "acme-diy",
                "--event-type",
                "TierChanged",
                "--locale",
                "en",
                "--programs",
                str(REPO / "programs"),
                "--html",
            ]
        )
    out = capsys.readouterr().out
    assert ok.value.code == 0 and out.startswith("Subject: Anna") and "<strong>Connoisseur</strong>" in out
    with pytest.raises(SystemExit) as bad:
        main(
            [
                "preview",
                "--tenant",
                "nobody",
                "--event-type",
                "TierChanged",
                "--locale",
                "en",
                "--programs",
                str(REPO / "programs"),
            ]
        )
    assert bad.value.code == 2 and "unknown tenant 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as resend:
        main(["resend", "--tenant", "acme-diy"])
    assert resend.value.code == 2 and "--all-failed" in capsys.readouterr().err
