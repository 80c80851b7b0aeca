"""Shared builders for the surveys tests: the example program section, calendars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from loyalty_surveys.program import SurveysProgram

EXAMPLE_PROGRAM = Path(__file__).resolve().parents[2] / "programs" / "acme-diy.yaml"


def example_section() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_PROGRAM.read_text())["surveys"]


def example_program(**overrides: Any) -> SurveysProgram:
    section = example_section()
    section.update(overrides)
    return SurveysProgram.model_validate(section)
