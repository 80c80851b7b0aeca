"""Retailer program files: one YAML per tenant, a common header plus one section per service.

``load_programs(dir, section, model)`` validates the header and the requested section of every file and
collects every problem as a ``ProgramError(file, path, reason)``; they are raised together as one
``ProgramFileInvalid`` whose message lists them all, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

M = TypeVar("M", bound=BaseModel)

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class ProgramError:
    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"


class ProgramFileInvalid(Exception):
    """Raised with every error found across all program files."""

    def __init__(self, errors: list[ProgramError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{len(errors)} error(s) in retailer program files:\n{lines}")


def known_time_zone(value: str) -> str:
    """``value`` if it names an IANA time zone (``Europe/Berlin``); else ValueError (a program file error)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


# A program-file field holding an IANA time zone name, checked when the file is loaded.
TimeZoneName = Annotated[str, AfterValidator(known_time_zone)]


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ProgramHeader(BaseModel):
    """Fields common to every retailer program file."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant: str = Field(pattern=TENANT_PATTERN.pattern)
    display_name: str = Field(min_length=1)
    locales: list[str] = Field(min_length=1)
    default_locale: str = Field(min_length=2)
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    api_keys: list[ApiKey] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("default_locale")
    @classmethod
    def _default_is_listed(cls, value: str, info: ValidationInfo) -> str:
        locales = info.data.get("locales")
        if locales is not None and value not in locales:
            raise ValueError(f"{value!r} is not one of locales {locales}")
        return value


@dataclass(frozen=True)
class TenantProgram(Generic[M]):
    """One tenant's validated header plus the requesting service's section."""

    header: ProgramHeader
    section: M
    file: Path

    @property
    def tenant(self) -> str:
        return self.header.tenant


def error_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Render a pydantic location as ``tiers.ladder[2].threshold``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_errors(file: str, exc: ValidationError, prefix: str) -> list[ProgramError]:
    return [ProgramError(file, error_path(tuple(err["loc"]), prefix), err["msg"]) for err in exc.errors()]


HEADER_FIELDS = frozenset(ProgramHeader.model_fields)


def load_program_files(
    directory: str | Path, section: str | None, model: type[M]
) -> dict[str, TenantProgram[M]]:
    """Load and validate every ``*.yaml``/``*.yml`` file; returns tenant → header + section."""
    root = Path(directory)
    errors: list[ProgramError] = []
    programs: dict[str, TenantProgram[M]] = {}
    if not root.is_dir():
        raise ProgramFileInvalid([ProgramError(str(root), "", "program directory does not exist")])
    files = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    if not files:
        raise ProgramFileInvalid([ProgramError(str(root), "", "no program files (*.yaml) found")])
    for path in files:
        name = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            errors.append(ProgramError(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
            continue
        if not isinstance(raw, dict):
            errors.append(ProgramError(name, "", "top level must be a mapping"))
            continue
        header: ProgramHeader | None = None
        try:
            header = ProgramHeader.model_validate({k: v for k, v in raw.items() if k in HEADER_FIELDS})
        except ValidationError as exc:
            errors.extend(_validation_errors(name, exc, ""))
        parsed: M | None = None
        if section is None:
            parsed = model.model_validate({})
        elif section not in raw:
            errors.append(ProgramError(name, section, f"missing section {section!r}"))
        else:
            try:
                parsed = model.model_validate(raw[section] if raw[section] is not None else {})
            except ValidationError as exc:
                errors.extend(_validation_errors(name, exc, section))
        if header is not None and parsed is not None:
            if header.tenant in programs:
                other = programs[header.tenant].file
                errors.append(ProgramError(name, "tenant", f"tenant {header.tenant!r} also defined in {other}"))
            else:
                programs[header.tenant] = TenantProgram(header=header, section=parsed, file=path)
    if errors:
        raise ProgramFileInvalid(errors)
    return programs


def load_programs(directory: str | Path, section: str, model: type[M]) -> dict[str, M]:
    """tenant → validated section model (the interface in docs/ARCHITECTURE.md)."""
    return {tenant: p.section for tenant, p in load_program_files(directory, section, model).items()}


def load_headers(directory: str | Path) -> dict[str, ProgramHeader]:
    """tenant → validated header (for auth and tenant lists), whatever sections the files have."""

    class _Ignored(BaseModel):
        model_config = ConfigDict(extra="allow")

    programs = load_program_files(directory, None, _Ignored)
    return {tenant: p.header for tenant, p in programs.items()}
