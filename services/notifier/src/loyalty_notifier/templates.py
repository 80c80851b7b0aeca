"""Message templates: Jinja2's sandboxed environment, StrictUndefined, one folder per locale.

Layout: `<templates_dir>/<locale>/<template>.<part>.j2` with parts `subject` and `text` (required), `html`
(optional: derived from text when absent) and `sms` (optional: the text is used). Every template of a
program is compiled and rendered against a sample context for each event type that uses it when the
program loads, so a broken template is a start-up error naming the file and line, never a send-time failure.
"""

from __future__ import annotations

import html as html_lib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateSyntaxError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

PARTS = ("subject", "text", "html", "sms")
REQUIRED_PARTS = ("subject", "text")


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str
    sms: str

    def to_json(self) -> dict[str, str]:
        return {"subject": self.subject, "text": self.text, "html": self.html, "sms": self.sms}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> RenderedMessage:
        return cls(data["subject"], data["text"], data["html"], data["sms"])


@dataclass(frozen=True)
class TemplateProblem:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class TemplateValidationError(Exception):
    """One or more templates are broken; every problem names its file and (when known) line."""

    def __init__(self, problems: list[TemplateProblem]) -> None:
        self.problems = problems
        super().__init__("invalid templates:\n" + "\n".join(f"  {p}" for p in problems))


class TemplateRenderError(Exception):
    """Rendering failed at send time (should not happen for validated templates and valid events)."""


def format_money(value: Mapping[str, Any] | None) -> str:
    """`{"amount_minor": 1250, "currency": "EUR"}` → `12.50 EUR` (integer arithmetic: money is never a float)."""
    if not value:
        return ""
    minor = int(value["amount_minor"])
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{whole}.{cents:02d} {value['currency']}"


def _line_in(exc: BaseException, filename: str) -> int | None:
    """Jinja rewrites tracebacks so template frames carry the template's file name and line."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line


class TemplateSet:
    """The compiled templates of one tenant."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.filters["money"] = format_money

    def _path(self, locale: str, name: str, part: str) -> str:
        return f"{locale}/{name}.{part}.j2"

    def exists(self, locale: str, name: str, part: str) -> bool:
        return (self.root / self._path(locale, name, part)).is_file()

    def render(self, name: str, locale: str, context: Mapping[str, Any]) -> RenderedMessage:
        parts: dict[str, str] = {}
        for part in PARTS:
            if not self.exists(locale, name, part):
                continue
            relative = self._path(locale, name, part)
            try:
                parts[part] = self.env.get_template(relative).render(context).strip()
            except TemplateError as exc:
                raise TemplateRenderError(f"{relative}: {exc}") from exc
        subject = " ".join(parts["subject"].split())  # a header is one line
        text = parts["text"]
        html = parts.get("html") or "<p>" + html_lib.escape(text).replace("\n", "<br>\n") + "</p>"
        return RenderedMessage(subject=subject, text=text, html=html, sms=parts.get("sms") or text)

    def problems(
        self, name: str, locale: str, contexts: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[TemplateProblem]:
        """Compile every part, then render it against each (label, sample context)."""
        found: list[TemplateProblem] = []
        for part in PARTS:
            relative = self._path(locale, name, part)
            file = str(self.root / relative)
            if not self.exists(locale, name, part):
                if part in REQUIRED_PARTS:
                    found.append(TemplateProblem(file, None, f"missing (template {name!r}, locale {locale!r})"))
                continue
            try:
                template = self.env.get_template(relative)
            except TemplateSyntaxError as exc:
                found.append(TemplateProblem(file, exc.lineno, f"syntax error: {exc.message}"))
                continue
            for label, context in contexts:
                try:
                    template.render(context)
                except TemplateError as exc:
                    line = _line_in(exc, template.filename or file)
                    found.append(TemplateProblem(file, line, f"{type(exc).__name__} rendering {label}: {exc}"))
                    break  # one context is enough to point at the line
                except Exception as exc:  # a sandbox SecurityError or a type error inside an expression
                    line = _line_in(exc, template.filename or file)
                    found.append(TemplateProblem(file, line, f"{type(exc).__name__} rendering {label}: {exc}"))
                    break
        return found


def sample_customer(locale: str) -> dict[str, Any]:
    """The customer part of the context, as the sender builds it (names match `customer_context`)."""
    return customer_context(
        customer_id="cust-0001",
        name="Anna Schmidt",
        locale=locale,
        tier="novice",
        last_purchase={"order_id": "order-1001", "skus": ["DRILL-18V"], "categories": ["tools"]},
    )


def customer_context(
    *, customer_id: str, name: str | None, locale: str, tier: str | None, last_purchase: dict[str, Any] | None
) -> dict[str, Any]:
    display = name or ""
    return {
        "id": customer_id,
        "name": display,
        "first_name": display.split(" ")[0] if display else "",
        "locale": locale,
        "tier": tier,
        "last_purchase": last_purchase,
    }


def message_context(
    *,
    tenant: str,
    tenant_name: str,
    event_type: str | None,
    event: Mapping[str, Any] | None,
    customer: Mapping[str, Any],
    footer: str,
    unsubscribe_url: str,
    journey: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every variable a template can use. Journey steps have `journey` and no `event`; event messages the
    reverse. Keys are always present (None when absent) so StrictUndefined only catches real typos."""
    return {
        "tenant": {"id": tenant, "name": tenant_name},
        "event_type": event_type,
        "event": event,
        "customer": customer,
        "footer": footer,
        "unsubscribe_url": unsubscribe_url,
        "journey": journey,
    }
