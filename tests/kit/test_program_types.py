"""Shared program-file field types (loyalty_kit.programs) used inside a service's section."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from loyalty_kit.programs import ProgramFileInvalid, TimeZoneName, known_time_zone, load_programs
from pydantic import BaseModel, ConfigDict

HEADER = (
    "tenant: {tenant}\ndisplay_name: Shop\ndefault_locale: en\nlocales: [en]\ntimezone: Europe/Berlin\n"
    'currency: EUR\napi_keys:\n  - name: main\n    sha256: "' + hashlib.sha256(b"k").hexdigest() + '"\n'
)


class Opening(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: TimeZoneName
    fallback_zone: TimeZoneName | None = None


def test_known_time_zone_returns_the_name_or_says_which_is_unknown() -> None:
    assert known_time_zone("America/New_York") == "America/New_York"
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        known_time_zone("Mars/Olympus")
    with pytest.raises(ValueError, match=r"unknown time zone '\.\./etc/passwd'"):
        known_time_zone("../etc/passwd")


def test_a_section_time_zone_is_checked_with_the_file_and_path_named(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(HEADER.format(tenant="good") + "hours:\n  timezone: Asia/Tokyo\n")
    assert load_programs(tmp_path, "hours", Opening)["good"] == Opening(timezone="Asia/Tokyo")

    (tmp_path / "bad.yaml").write_text(
        HEADER.format(tenant="bad") + "hours:\n  timezone: Europe/Berlin\n  fallback_zone: Atlantis/Main\n"
    )
    with pytest.raises(ProgramFileInvalid) as caught:
        load_programs(tmp_path, "hours", Opening)
    [error] = caught.value.errors
    assert (Path(error.file).name, error.path) == ("bad.yaml", "hours.fallback_zone")
    assert "unknown time zone 'Atlantis/Main'" in error.reason
