"""The topic catalogue (which drives Strimzi topics, Kafka ACLs, AsyncAPI and lag checks) says exactly what
each service really subscribes to: a topic listed but never consumed would show lag forever, and one consumed
but not listed would be refused by the service's KafkaUser ACLs in Kubernetes."""

from __future__ import annotations

from pathlib import Path

import pytest
from loyalty_contracts.catalogue import topics_consumed_by, topics_produced_by
from loyalty_kit.service import ServiceApp
from loyalty_kit.settings import ServiceSettings
from loyalty_suite.services import random_secret_for, secret_env_names

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"


def _environ() -> dict[str, str]:
    import os

    env = dict(os.environ)
    for name in secret_env_names(PROGRAMS):
        env.setdefault(name, random_secret_for(name))
    return env


def _build(service: str, monkeypatch: pytest.MonkeyPatch) -> ServiceApp:
    env = _environ()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOYALTY_PROGRAMS_DIR", str(PROGRAMS))
    if service == "tiers":
        from loyalty_tiers.app import build_app as build_tiers

        return build_tiers(ServiceSettings(service="tiers", programs_dir=PROGRAMS))[0]
    if service == "referrals":
        from loyalty_referrals.app import build as build_referrals

        return build_referrals(ServiceSettings(service="referrals", programs_dir=PROGRAMS), environ=env)
    if service == "surveys":
        from loyalty_surveys.app import build_app as build_surveys

        return build_surveys(ServiceSettings(service="surveys", programs_dir=PROGRAMS), environ=env)[0]
    from loyalty_notifier.app import NotifierSettings
    from loyalty_notifier.app import build_app as build_notifier

    return build_notifier(NotifierSettings(service="notifier", programs_dir=PROGRAMS), environ=env)


@pytest.mark.parametrize("service", ["tiers", "referrals", "surveys", "notifier"])
def test_catalogue_consumers_equal_the_service_subscriptions(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _build(service, monkeypatch)
    assert sorted(app.consumed_topics) == sorted(topics_consumed_by(service))


@pytest.mark.parametrize("service", ["tiers", "referrals", "surveys", "notifier"])
def test_every_service_produces_something_it_owns(service: str) -> None:
    assert topics_produced_by(service), f"{service} produces no topic in the catalogue"
