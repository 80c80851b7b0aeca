"""Program files (header + one section, every error listed with file and path) and tenant API keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from loyalty_kit.auth import Caller, TenantAuth
from loyalty_kit.programs import ProgramFileInvalid, load_headers, load_programs
from pydantic import BaseModel, ConfigDict, Field

REPO_PROGRAMS = Path(__file__).resolve().parents[2] / "programs"


class Rung(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    threshold: int = Field(ge=0)


class Ladder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ladder: list[Rung] = Field(default_factory=list)


HEADER = """
tenant: {tenant}
display_name: Shop
default_locale: en
locales: [en]
timezone: Europe/Berlin
currency: EUR
api_keys:
  - name: main
    sha256: "{sha}"
"""


def write(dir_: Path, name: str, tenant: str, section: str, key: str = "k") -> None:
    sha = hashlib.sha256(key.encode()).hexdigest()
    (dir_ / name).write_text(HEADER.format(tenant=tenant, sha=sha) + section)


def test_loads_every_tenant_section(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", "one", "tiers:\n  ladder:\n    - {name: base, threshold: 0}\n")
    write(tmp_path, "two.yaml", "two", "tiers: {}\n")
    programs = load_programs(tmp_path, "tiers", Ladder)
    assert programs["one"].ladder == [Rung(name="base", threshold=0)]
    assert programs["two"].ladder == []


def test_the_repository_example_has_a_valid_header() -> None:
    headers = load_headers(REPO_PROGRAMS)
    assert "acme-diy" in headers
    assert headers["acme-diy"].api_keys[0].sha256 == hashlib.sha256(b"acme-demo-key").hexdigest()


def test_all_errors_are_listed_with_file_and_path(tmp_path: Path) -> None:
    write(
        tmp_path, "bad.yaml", "bad",
        "tiers:\n  ladder:\n    - {name: a, threshold: 0}\n    - {name: b, threshold: 1}\n"
        "    - {name: c, threshold: -5}\n",
    )
    (tmp_path / "worse.yaml").write_text(
        "tenant: worse\ndisplay_name: W\ndefault_locale: de\nlocales: [en]\ntimezone: Mars/Olympus\n"
        "currency: euro\n"
    )
    (tmp_path / "broken.yaml").write_text("tenant: [unclosed\n")
    with pytest.raises(ProgramFileInvalid) as caught:
        load_programs(tmp_path, "tiers", Ladder)
    found = {(Path(e.file).name, e.path) for e in caught.value.errors}
    assert ("bad.yaml", "tiers.ladder[2].threshold") in found
    assert ("worse.yaml", "default_locale") in found
    assert ("worse.yaml", "timezone") in found
    assert ("worse.yaml", "currency") in found
    assert ("worse.yaml", "tiers") in found  # missing section
    assert any(name == "broken.yaml" and path.startswith("line ") for name, path in found)
    message = str(caught.value)
    assert "bad.yaml: tiers.ladder[2].threshold:" in message and "greater than or equal to 0" in message


def test_duplicate_tenants_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "same", "tiers: {}\n")
    write(tmp_path, "b.yaml", "same", "tiers: {}\n")
    with pytest.raises(ProgramFileInvalid, match="also defined in"):
        load_programs(tmp_path, "tiers", Ladder)


def test_api_keys_authenticate_one_tenant_only(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", "one", "", key="key-one")
    write(tmp_path, "two.yaml", "two", "", key="key-two")
    auth = TenantAuth(load_headers(tmp_path))
    api = FastAPI()

    @api.get("/tenants/{tenant}/things")
    def things(tenant: str, caller: Caller = Depends(auth)) -> dict[str, str]:
        return {"tenant": caller.tenant}

    client = TestClient(api)
    assert client.get("/tenants/one/things", headers={"Authorization": "Bearer key-one"}).json() == {"tenant": "one"}
    missing = client.get("/tenants/one/things")
    assert missing.status_code == 401 and "missing Authorization" in missing.json()["detail"]
    wrong = client.get("/tenants/one/things", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown API key"
    scheme = client.get("/tenants/one/things", headers={"Authorization": "Basic key-one"})
    assert scheme.status_code == 401
    other = client.get("/tenants/one/things", headers={"Authorization": "Bearer key-two"})
    assert other.status_code == 403 and "another tenant" in other.json()["detail"]
