"""The surveys section of the program file: the example validates; mistakes name file, path and reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from loyalty_kit.programs import ProgramFileInvalid, load_programs
from loyalty_surveys.program import SurveysProgram, parse_duration
from pydantic import ValidationError

from .helpers import EXAMPLE_PROGRAM, example_section


def test_example_program_loads_through_the_kit() -> None:
    programs = load_programs(EXAMPLE_PROGRAM.parent, "surveys", SurveysProgram)
    program = programs["acme-diy"]
    assert [s.id for s in program.surveys] == ["delivery-csat", "first-purchase-nps", "consultation-question"]
    assert program.surveys[0].trigger.delay == timedelta(days=2)
    assert program.cases.response_deadline == timedelta(hours=8)
    assert program.business_hours.calendar().weekly[6] == ()  # Sunday closed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", timedelta(days=2)),
        ("48h", timedelta(hours=48)),
        ("1d12h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        (30, timedelta(seconds=30)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["2 days", "", "-1d", "1.5h", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def broken(mutate: Any) -> dict[str, Any]:
    section = example_section()
    mutate(section)
    return section


CASES = [
    (lambda s: s["surveys"][0]["trigger"].update(delay="two days"), "surveys.0.trigger.delay", "duration"),
    (lambda s: s["surveys"][0].update(sampling_rate=1.5), "surveys.0.sampling_rate", "less than or equal"),
    (lambda s: s["surveys"][0].update(kind="ces"), "surveys.0.kind", "nps"),
    (lambda s: s["surveys"][0]["trigger"].update(first_purchase_only=True), "surveys.0.trigger", "PurchaseMade"),
    (lambda s: s["surveys"][1].update(id="delivery-csat"), "", "repeated: delivery-csat"),
    (lambda s: s["business_hours"].update(timezone="Mars/Olympus"), "business_hours.timezone", "unknown time zone"),
    (
        lambda s: s["business_hours"]["weekly"].update(mon=["09:00-13:00", "12:00-18:00"]),
        "business_hours.weekly",
        "overlap",
    ),
    (lambda s: s["business_hours"]["weekly"].update(tue=["18:00-09:00"]), "business_hours.weekly.tue.0", "end before"),
    (lambda s: s["business_hours"].update(weekly={}), "business_hours.weekly", "at least one weekday"),
    (lambda s: s["cases"]["queues"].append({"name": "x", "themes": ["nope"]}), "", "unknown themes: nope"),
    (lambda s: s["themes"][0].update(patterns=["(unclosed"]), "themes.0.patterns", "regular expression"),
    (
        lambda s: s["loyalty_account"]["weights"].update(free_hugs=1),
        "loyalty_account.weights.free_hugs.[key]",
        "survey_answered",
    ),
    (lambda s: s["answer_token"].update(answer_url="https://x.example/"), "answer_token.answer_url", "{token}"),
    (lambda s: s["answer_token"].update(secret_env="my secret"), "answer_token.secret_env", "pattern"),
    (lambda s: s.update(recontact_days=30), "recontact_days", "Extra inputs"),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), CASES)
def test_mistakes_are_reported_with_path_and_reason(mutate: Any, path: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        SurveysProgram.model_validate(broken(mutate))
    found = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]
    assert any(loc == path and reason in msg for loc, msg in found), found


def test_kit_loader_names_file_and_section_path(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_PROGRAM.read_text())
    raw["surveys"]["cases"]["response_deadline"] = "soon"
    raw["surveys"]["surveys"][2]["sampling_rate"] = -1
    bad = tmp_path / "acme-diy.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ProgramFileInvalid) as info:
        load_programs(tmp_path, "surveys", SurveysProgram)
    errors = {(e.file, e.path) for e in info.value.errors}
    assert (str(bad), "surveys.cases.response_deadline") in errors
    assert (str(bad), "surveys.surveys[2].sampling_rate") in errors
    assert "acme-diy.yaml: surveys.cases.response_deadline" in str(info.value)
