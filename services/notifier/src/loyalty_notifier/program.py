"""The `notifier:` section of a retailer program file, as a pydantic model.

Structural validation (types, references between routes / channels / journeys) lives here so the kit's
`load_programs` reports it as `ProgramError(file, path, reason)`. Template validation (syntax, undefined
variables) needs the files on disk and the sample events; it lives in `templates.py` and runs right after.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from loyalty_notifier.domain import Category, Channel

EVENT_TYPE_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9]+$")
TEMPLATE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
ENV_NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Standard Webhooks' recommended schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
DEFAULT_RETRY_SCHEDULE_S: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000)


Loc = tuple[str | int, ...]


def raise_at(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise every cross-reference problem at once, each at its own path inside the section."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("reference", "{reason}", {"reason": reason}), loc=loc, input=None
                )
                for loc, reason in problems
            ],
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpChannelConfig(_Strict):
    """Email over SMTP (aiosmtplib). Credentials come from environment variables, never from the file."""

    kind: Literal["smtp"] = "smtp"
    host: str
    port: int = Field(587, ge=1, le=65535)
    from_address: str = Field(description="RFC 5322 From address, e.g. 'ACME DIY <hello@acme.example>'")
    starttls: bool = False
    use_tls: bool = False
    username_env: str | None = None
    password_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)
    rate_per_second: float = Field(50.0, gt=0)
    connections: int = Field(4, ge=1, le=100, description="SMTP sessions kept open and reused")


class SmsChannelConfig(_Strict):
    """A generic HTTP SMS provider: POST JSON {to, from, text} with a bearer token."""

    kind: Literal["http_sms"] = "http_sms"
    url: str
    sender_id: str = "ACME"
    token_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)
    rate_per_second: float = Field(20.0, gt=0)
    max_in_flight: int = Field(8, ge=1, le=256, description="concurrent requests to the provider")


class TelegramChannelConfig(_Strict):
    """Telegram Bot API sendMessage; base_url is configurable so tests can point it at a local server."""

    kind: Literal["telegram"] = "telegram"
    base_url: str = "https://api.telegram.org"
    token_env: str
    timeout_s: float = Field(10.0, gt=0)
    rate_per_second: float = Field(25.0, gt=0)
    max_in_flight: int = Field(8, ge=1, le=256, description="concurrent requests to the Bot API")


class ChannelsConfig(_Strict):
    email: SmtpChannelConfig | None = None
    sms: SmsChannelConfig | None = None
    telegram: TelegramChannelConfig | None = None

    def configured(self) -> set[Channel]:
        return {Channel(name) for name in ("email", "sms", "telegram") if getattr(self, name) is not None}


class WebhookEndpointConfig(_Strict):
    """A partner endpoint receiving events signed per the Standard Webhooks spec."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    url: str
    # Every listed secret is active and signs each message (rotation: add the new one, drop the old later).
    secret_envs: list[str] = Field(min_length=1)
    event_types: list[str] = Field(min_length=1)
    disable_after_failures: int = Field(10, ge=1, description="consecutive failed attempts before disabling")
    timeout_s: float = Field(10.0, gt=0)
    rate_per_second: float = Field(50.0, gt=0)
    max_in_flight: int = Field(8, ge=1, le=256, description="concurrent requests to the endpoint")

    @field_validator("secret_envs")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not ENV_NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (UPPER_SNAKE)")
        return value


class RetryConfig(_Strict):
    schedule_seconds: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S), min_length=1)
    jitter_fraction: float = Field(0.2, ge=0, le=1)

    @field_validator("schedule_seconds")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v <= 0 for v in value):
            raise ValueError("every retry delay must be > 0 seconds")
        return value


class QuietHoursConfig(_Strict):
    """Local time window (customer's time zone) in which messages wait; may wrap midnight (21:00-08:00)."""

    start: time
    end: time
    categories: list[Category] = Field(default_factory=lambda: [Category.SERVICE, Category.MARKETING, Category.SURVEY])

    @model_validator(mode="after")
    def _non_empty(self) -> QuietHoursConfig:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self


class FrequencyCapConfig(_Strict):
    category: Category
    max_messages: int = Field(ge=0)
    per_days: int = Field(ge=1)

    @field_validator("category")
    @classmethod
    def _not_transactional(cls, value: Category) -> Category:
        if value is Category.TRANSACTIONAL:
            raise ValueError("transactional messages are never capped")
        return value


class ContactBudgetConfig(_Strict):
    """The per-customer contact budget shared by all non-transactional messages (docs/CONTACT_BUDGET.md)."""

    max_messages: int = Field(ge=1)
    per_days: int = Field(ge=1)
    # Slots marketing may not use, so service and survey messages still fit: marketing is suppressed first.
    marketing_reserve: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _reserve_fits(self) -> ContactBudgetConfig:
        if self.marketing_reserve >= self.max_messages:
            raise ValueError("marketing_reserve must be smaller than max_messages")
        return self


class RouteConfig(_Strict):
    """What one event type becomes: a template, a consent category and channels in order of preference."""

    template: str
    category: Category
    channels: list[Channel] = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if not TEMPLATE_NAME_PATTERN.match(value):
            raise ValueError(f"template name {value!r} must be lower_snake_case")
        return value

    @field_validator("channels")
    @classmethod
    def _no_duplicates(cls, value: list[Channel]) -> list[Channel]:
        if len(set(value)) != len(value):
            raise ValueError("a channel is listed twice")
        return value


class JourneyStepConfig(_Strict):
    step: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    after_days: int = Field(ge=0, description="days after entering the path (or after the trigger)")
    template: str
    channels: list[Channel] | None = Field(None, description="defaults to the journey's channels")


class JourneyBranchConfig(_Strict):
    """A purchase in one of these product categories moves the customer to another path."""

    on: Literal["PurchaseMade"] = "PurchaseMade"
    when_categories: list[str] = Field(min_length=1)
    to_path: str


class JourneyTriggerConfig(_Strict):
    """A purchase in one of these categories schedules one extra step ('first check of your tool')."""

    on: Literal["PurchaseMade"] = "PurchaseMade"
    when_categories: list[str] = Field(min_length=1)
    then: JourneyStepConfig


class JourneyConfig(_Strict):
    start_on: Literal["CustomerRegistered", "PurchaseMade"] = Field(
        "CustomerRegistered", description="PurchaseMade = the customer's first purchase seen by the notifier"
    )
    category: Category = Category.MARKETING
    max_days: int = Field(100, ge=1, description="the journey ends this many days after it started")
    channels: list[Channel] = Field(min_length=1)
    paths: dict[str, list[JourneyStepConfig]]
    branches: list[JourneyBranchConfig] = Field(default_factory=list)
    triggers: list[JourneyTriggerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _paths_consistent(self) -> JourneyConfig:
        problems: list[tuple[Loc, str]] = []
        if "default" not in self.paths:
            problems.append((("paths",), "a journey needs a 'default' path"))
        for i, branch in enumerate(self.branches):
            if branch.to_path not in self.paths:
                problems.append((("branches", i, "to_path"), f"unknown path {branch.to_path!r}"))
        seen: dict[str, str] = {}
        for path, steps in self.paths.items():
            for i, step in enumerate(steps):
                if step.after_days > self.max_days:
                    problems.append(
                        (("paths", path, i, "after_days"), f"after the journey's end (day {self.max_days})")
                    )
                other = seen.get(step.step)
                if other is not None and other != step.template:
                    problems.append(
                        (
                            ("paths", path, i, "template"),
                            f"step {step.step!r} already uses template {other!r}",
                        )
                    )
                seen[step.step] = step.template
        raise_at("JourneyConfig", problems)
        return self

    def step_templates(self) -> set[str]:
        names = {s.template for steps in self.paths.values() for s in steps}
        return names | {t.then.template for t in self.triggers}


class NotifierProgram(_Strict):
    """The notifier section of one tenant's program file."""

    templates_dir: str = Field(description="folder of <locale>/<template>.<part>.j2, relative to the program file")
    footer: dict[str, str] = Field(
        default_factory=dict, description="honest-automation footer per locale, available as {{ footer }}"
    )
    unsubscribe_url: str = Field(
        "https://example.invalid/unsubscribe?c={customer_id}&cat={category}",
        description="List-Unsubscribe URL; {customer_id} and {category} are filled in",
    )
    unsubscribe_mailto: str | None = None
    quiet_hours: QuietHoursConfig | None = None
    contact_budget: ContactBudgetConfig | None = None
    frequency_caps: list[FrequencyCapConfig] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig.model_validate({}))
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    webhooks: list[WebhookEndpointConfig] = Field(default_factory=list)
    journeys: dict[str, JourneyConfig] = Field(default_factory=dict)

    @field_validator("routes")
    @classmethod
    def _route_event_types(cls, value: dict[str, RouteConfig]) -> dict[str, RouteConfig]:
        for event_type in value:
            if not EVENT_TYPE_PATTERN.match(event_type):
                raise ValueError(f"{event_type!r} is not an event type name (e.g. TierChanged)")
        return value

    @model_validator(mode="after")
    def _references(self) -> NotifierProgram:
        problems: list[tuple[Loc, str]] = []
        configured = self.channels.configured()
        for event_type, route in self.routes.items():
            for i, channel in enumerate(route.channels):
                if channel not in configured:
                    problems.append(
                        (
                            ("routes", event_type, "channels", i),
                            f"channel {channel.value!r} is not configured",
                        )
                    )
        for name, journey in self.journeys.items():
            for i, channel in enumerate(journey.channels):
                if channel not in configured:
                    problems.append((("journeys", name, "channels", i), f"channel {channel.value!r} is not configured"))
            for path, steps in journey.paths.items():
                for j, step in enumerate(steps):
                    for k, channel in enumerate(step.channels or []):
                        if channel not in configured:
                            problems.append(
                                (
                                    ("journeys", name, "paths", path, j, "channels", k),
                                    f"channel {channel.value!r} is not configured",
                                )
                            )
        seen_ids: set[str] = set()
        for i, hook in enumerate(self.webhooks):
            if hook.id in seen_ids:
                problems.append((("webhooks", i, "id"), f"two endpoints share the id {hook.id!r}"))
            seen_ids.add(hook.id)
        seen_caps: set[Category] = set()
        for i, cap in enumerate(self.frequency_caps):
            if cap.category in seen_caps:
                problems.append((("frequency_caps", i, "category"), "one cap per category"))
            seen_caps.add(cap.category)
        raise_at("NotifierProgram", problems)
        return self

    def template_names(self) -> set[str]:
        names = {r.template for r in self.routes.values()}
        for journey in self.journeys.values():
            names |= journey.step_templates()
        return names

    def webhook_event_types(self) -> set[str]:
        return {t for w in self.webhooks for t in w.event_types}
