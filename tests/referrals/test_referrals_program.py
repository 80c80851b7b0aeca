"""The referrals section of the program file: the example validates, bad sections fail with path + reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from loyalty_referrals.domain import RejectReason
from loyalty_referrals.program import MissingCodeSecret, ReferralsProgram, resolve_code_secrets
from pydantic import ValidationError

EXAMPLE = Path(__file__).resolve().parents[2] / "programs" / "acme-diy.yaml"


def example_section() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())["referrals"]


def errors_of(section: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        ReferralsProgram.model_validate(section)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in caught.value.errors()]


def test_example_program_validates_into_rules() -> None:
    program = ReferralsProgram.model_validate(example_section())
    rules = program.rules()
    assert rules.referrer_reward.kind == "points" and rules.referrer_reward.points == 500
    assert rules.referee_reward.kind == "coupon" and rules.referee_reward.amount_minor == 1000
    assert rules.min_first_order_minor == 3000 and rules.currency == "EUR"
    assert rules.hold_days == 30
    assert "mailinator.com" in rules.blocked_email_domains
    assert RejectReason.VELOCITY_LIMIT in rules.review_reasons
    assert rules.excluded_categories == {"delivery_fee", "gift_card"}
    assert program.codes.link_template.endswith("{code}")


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda s: s["codes"].update(link_template="https://x.example/invite"), "codes.link_template", "{code}"),
        (lambda s: s["codes"].update(link_template="https://x/{code}/{user}"), "codes.link_template", "no other"),
        (lambda s: s["codes"].update(secret_env="s3cr3t value"), "codes.secret_env", "environment variable"),
        (lambda s: s["codes"].update(length=4), "codes.length", "greater than or equal to 6"),
        (lambda s: s["rewards"]["referrer"].update(kind="cash"), "rewards.referrer", "tag"),
        (lambda s: s["rewards"]["referrer"].update(points=0), "rewards.referrer.points.points", "greater than 0"),
        (lambda s: s["min_first_order"].update(currency="eur"), "min_first_order.currency", "ISO 4217"),
        (
            lambda s: s["fraud"].update(blocked_email_domains=["not a domain"]),
            "fraud.blocked_email_domains",
            "not a domain",
        ),
        (
            lambda s: s["fraud"].update(review_instead_of_reject=["referral_cycle"]),
            "fraud.review_instead_of_reject",
            "always rejected",
        ),
        (
            lambda s: s["fraud"].update(review_instead_of_reject=["bogus"]),
            "fraud.review_instead_of_reject.0",
            "Input should be",
        ),
        (lambda s: s.update(surprise=1), "surprise", "Extra inputs"),
        (
            lambda s: s["rewards"].update(referee={"kind": "coupon", "amount_minor": 5, "currency": "USD"}),
            "",
            "one currency",
        ),
    ],
)
def test_bad_sections_name_the_path_and_the_reason(mutate: Any, path: str, reason: str) -> None:
    section = copy.deepcopy(example_section())
    mutate(section)
    errors = errors_of(section)
    assert any(loc == path and reason in msg for loc, msg in errors), errors


def test_missing_required_parts() -> None:
    section = example_section()
    del section["rewards"]
    assert ("rewards", "Field required") in errors_of(section)


def test_code_secret_comes_from_the_named_environment_variable() -> None:
    programs = {"acme-diy": ReferralsProgram.model_validate(example_section())}
    secrets = resolve_code_secrets(programs, {"ACME_DIY_REFERRAL_SECRET": "x" * 32})
    assert secrets == {"acme-diy": b"x" * 32}
    with pytest.raises(MissingCodeSecret, match=r"acme-diy: referrals.codes.secret_env \(ACME_DIY_REFERRAL_SECRET\)"):
        resolve_code_secrets(programs, {})
    with pytest.raises(MissingCodeSecret, match="at least 16 bytes"):
        resolve_code_secrets(programs, {"ACME_DIY_REFERRAL_SECRET": "short"})
