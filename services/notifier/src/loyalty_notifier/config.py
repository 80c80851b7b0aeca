"""A tenant's notifier configuration, compiled and fully validated at load time.

`load_tenants(programs_dir)` = the kit's program loading (header + `notifier:` section, errors as
file/path/reason) + checks that need more than the section: event types exist in the contracts,
locales match the header, and every template compiles and renders against sample events. All problems
are raised together as the kit's `ProgramFileInvalid`; template problems name the template file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loyalty_contracts.registry import EVENT_TYPES
from loyalty_contracts.samples import SAMPLES
from loyalty_kit.programs import ProgramError, ProgramFileInvalid, ProgramHeader, load_program_files

from loyalty_notifier.domain import (
    BranchSpec,
    Category,
    Channel,
    ContactBudget,
    FrequencyCap,
    JourneySpec,
    QuietHours,
    RoutePolicy,
    StepSpec,
    TriggerSpec,
)
from loyalty_notifier.program import JourneyConfig, JourneyStepConfig, NotifierProgram
from loyalty_notifier.templates import (
    RenderedMessage,
    TemplateSet,
    message_context,
    sample_customer,
)

SECTION = "notifier"


def latest_ce_type(event_name: str) -> str | None:
    """`TierChanged` → `loyalty.TierChanged.v1` (highest registered version)."""
    versions = [m.event_version for m in EVENT_TYPES.values() if m.event_type == event_name]
    return f"loyalty.{event_name}.v{max(versions)}" if versions else None


def event_name_of(ce_type: str) -> str:
    return EVENT_TYPES[ce_type].event_type


def _step(cfg: JourneyStepConfig) -> StepSpec:
    return StepSpec(cfg.step, cfg.after_days, cfg.template, tuple(cfg.channels) if cfg.channels else None)


def journey_spec(name: str, cfg: JourneyConfig) -> JourneySpec:
    return JourneySpec(
        name=name,
        start_on=cfg.start_on,
        category=cfg.category,
        max_days=cfg.max_days,
        channels=tuple(cfg.channels),
        paths={path: tuple(_step(s) for s in steps) for path, steps in cfg.paths.items()},
        branches=tuple(BranchSpec(frozenset(b.when_categories), b.to_path) for b in cfg.branches),
        triggers=tuple(TriggerSpec(frozenset(t.when_categories), _step(t.then)) for t in cfg.triggers),
    )


@dataclass(frozen=True)
class TenantNotifier:
    """Everything the handlers and the sender need for one tenant, as domain policies."""

    tenant: str
    header: ProgramHeader
    display_name: str
    locales: tuple[str, ...]
    default_locale: str
    timezone: str
    file: Path
    program: NotifierProgram
    templates: TemplateSet
    routes: dict[str, RoutePolicy]
    quiet: QuietHours | None
    budget: ContactBudget | None
    caps: tuple[FrequencyCap, ...]
    journeys: dict[str, JourneySpec]

    @property
    def configured_channels(self) -> frozenset[Channel]:
        return frozenset(self.program.channels.configured())

    def footer(self, locale: str) -> str:
        return self.program.footer.get(locale) or self.program.footer.get(self.default_locale, "")

    def unsubscribe_url(self, customer_id: str, category: Category) -> str:
        return self.program.unsubscribe_url.format(customer_id=customer_id, category=category.value)

    def render(
        self,
        template: str,
        locale: str,
        *,
        event_type: str | None,
        event: dict[str, Any] | None,
        customer: dict[str, Any],
        category: Category,
        journey: dict[str, Any] | None = None,
    ) -> RenderedMessage:
        context = message_context(
            tenant=self.tenant,
            tenant_name=self.display_name,
            event_type=event_type,
            event=event,
            customer=customer,
            footer=self.footer(locale),
            unsubscribe_url=self.unsubscribe_url(customer.get("id", ""), category),
            journey=journey,
        )
        return self.templates.render(template, locale, context)

    def sample_contexts(self, template: str, locale: str) -> list[tuple[str, dict[str, Any]]]:
        """The contexts a template must render with: one per event type routed to it, one per journey step."""
        contexts: list[tuple[str, dict[str, Any]]] = []
        customer = sample_customer(locale)
        for event_name, route in self.routes.items():
            ce_type = latest_ce_type(event_name)
            if route.template != template or ce_type is None:
                continue
            contexts.append(
                (
                    f"sample {event_name}",
                    message_context(
                        tenant=self.tenant,
                        tenant_name=self.display_name,
                        event_type=event_name,
                        event=SAMPLES[ce_type].model_dump(mode="json"),
                        customer=customer,
                        footer=self.footer(locale),
                        unsubscribe_url=self.unsubscribe_url(customer["id"], route.category),
                        journey=None,
                    ),
                )
            )
        for name, spec in self.journeys.items():
            steps = [s for steps in spec.paths.values() for s in steps] + [t.then for t in spec.triggers]
            for step in steps:
                if step.template != template:
                    continue
                contexts.append(
                    (
                        f"journey {name} step {step.step}",
                        message_context(
                            tenant=self.tenant,
                            tenant_name=self.display_name,
                            event_type=None,
                            event=None,
                            customer=customer,
                            footer=self.footer(locale),
                            unsubscribe_url=self.unsubscribe_url(customer["id"], spec.category),
                            journey=journey_context(name, step.step, "default", step.after_days),
                        ),
                    )
                )
                break
        return contexts


def journey_context(name: str, step: str, path: str, day: int) -> dict[str, Any]:
    return {"name": name, "step": step, "path": path, "day": day}


def compile_tenant(header: ProgramHeader, program: NotifierProgram, file: Path) -> TenantNotifier:
    quiet = None
    if program.quiet_hours is not None:
        q = program.quiet_hours
        quiet = QuietHours(q.start, q.end, frozenset(q.categories))
    budget = None
    if program.contact_budget is not None:
        b = program.contact_budget
        budget = ContactBudget(b.max_messages, b.per_days, b.marketing_reserve)
    templates_root = (file.parent / program.templates_dir).resolve()
    return TenantNotifier(
        tenant=header.tenant,
        header=header,
        display_name=header.display_name,
        locales=tuple(header.locales),
        default_locale=header.default_locale,
        timezone=header.timezone,
        file=file,
        program=program,
        templates=TemplateSet(templates_root),
        routes={name: RoutePolicy(r.template, r.category, tuple(r.channels)) for name, r in program.routes.items()},
        quiet=quiet,
        budget=budget,
        caps=tuple(FrequencyCap(c.category, c.max_messages, c.per_days) for c in program.frequency_caps),
        journeys={name: journey_spec(name, j) for name, j in program.journeys.items()},
    )


def tenant_problems(tenant: TenantNotifier) -> list[ProgramError]:
    file = str(tenant.file)
    problems: list[ProgramError] = []
    for event_name in tenant.program.routes:
        if latest_ce_type(event_name) is None:
            problems.append(ProgramError(file, f"{SECTION}.routes.{event_name}", "unknown event type"))
    for i, hook in enumerate(tenant.program.webhooks):
        for j, event_name in enumerate(hook.event_types):
            if latest_ce_type(event_name) is None:
                problems.append(
                    ProgramError(
                        file, f"{SECTION}.webhooks[{i}].event_types[{j}]", f"unknown event type {event_name!r}"
                    )
                )
    for locale in tenant.program.footer:
        if locale not in tenant.locales:
            problems.append(
                ProgramError(
                    file, f"{SECTION}.footer.{locale}", f"locale not in the program's locales {tenant.locales}"
                )
            )
    if not tenant.templates.root.is_dir():
        problems.append(
            ProgramError(file, f"{SECTION}.templates_dir", f"template folder {tenant.templates.root} does not exist")
        )
        return problems
    for template in sorted(tenant.program.template_names()):
        for locale in tenant.locales:
            for problem in tenant.templates.problems(template, locale, tenant.sample_contexts(template, locale)):
                line = f"line {problem.line}" if problem.line else f"{SECTION} template {template!r}"
                problems.append(ProgramError(problem.file, line, problem.reason))
    return problems


def load_tenants(programs_dir: str | Path) -> dict[str, TenantNotifier]:
    """Load and validate every tenant's notifier configuration, templates included."""
    programs = load_program_files(programs_dir, SECTION, NotifierProgram)
    tenants: dict[str, TenantNotifier] = {}
    problems: list[ProgramError] = []
    for name, loaded in programs.items():
        tenant = compile_tenant(loaded.header, loaded.section, loaded.file)
        problems.extend(tenant_problems(tenant))
        tenants[name] = tenant
    if problems:
        raise ProgramFileInvalid(problems)
    return tenants


def missing_secrets(tenants: dict[str, TenantNotifier], environ: dict[str, str] | None = None) -> list[ProgramError]:
    """Secrets and tokens are named in the file and read from the environment at start-up."""
    env = os.environ if environ is None else environ
    found: list[ProgramError] = []
    for tenant in tenants.values():
        file = str(tenant.file)
        for i, hook in enumerate(tenant.program.webhooks):
            for j, var in enumerate(hook.secret_envs):
                if not env.get(var):
                    found.append(
                        ProgramError(
                            file, f"{SECTION}.webhooks[{i}].secret_envs[{j}]", f"environment variable {var} is not set"
                        )
                    )
        channels = tenant.program.channels
        named: list[tuple[str, str | None]] = [
            ("telegram.token_env", channels.telegram.token_env if channels.telegram else None),
            ("sms.token_env", channels.sms.token_env if channels.sms else None),
        ]
        for name, token_var in named:
            if token_var and not env.get(token_var):
                found.append(
                    ProgramError(file, f"{SECTION}.channels.{name}", f"environment variable {token_var} is not set")
                )
    return found


def preview(programs_dir: str | Path, tenant: str, event_type: str, locale: str) -> RenderedMessage:
    """Render the message a sample event of `event_type` becomes (the `loyalty notifier preview` CLI).

    `event_type` is an event name (TierChanged) or a journey step as `journey:<name>:<step>`."""
    tenants = load_tenants(programs_dir)
    if tenant not in tenants:
        raise KeyError(f"unknown tenant {tenant!r}; known: {sorted(tenants)}")
    return preview_tenant(tenants[tenant], event_type, locale)


def preview_tenant(config: TenantNotifier, event_type: str, locale: str) -> RenderedMessage:
    """`preview` for an already loaded tenant (the API's /preview)."""
    if locale not in config.locales:
        raise KeyError(f"locale {locale!r} is not one of {config.locales}")
    customer = sample_customer(locale)
    if event_type.startswith("journey:"):
        _, journey_name, step_name = [*event_type.split(":"), "", ""][:3]
        spec = config.journeys.get(journey_name)
        if spec is None:
            raise KeyError(f"unknown journey {journey_name!r}; known: {sorted(config.journeys)}")
        for path, steps in spec.paths.items():
            for step in (*steps, *(t.then for t in spec.triggers)):
                if step.step == step_name:
                    return config.render(
                        step.template,
                        locale,
                        event_type=None,
                        event=None,
                        customer=customer,
                        category=spec.category,
                        journey=journey_context(journey_name, step.step, path, step.after_days),
                    )
        raise KeyError(f"journey {journey_name!r} has no step {step_name!r}")
    route = config.routes.get(event_type)
    ce_type = latest_ce_type(event_type)
    if route is None or ce_type is None:
        raise KeyError(f"no route for event type {event_type!r}; routed: {sorted(config.routes)}")
    return config.render(
        route.template,
        locale,
        event_type=event_type,
        event=SAMPLES[ce_type].model_dump(mode="json"),
        customer=customer,
        category=route.category,
    )
