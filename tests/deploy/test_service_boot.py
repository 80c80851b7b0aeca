"""What the image does at run time, without Docker: the locked runtime packages installed NON-editable (as
the Dockerfile's build stage does, so missing package data such as migration .sql files shows up), each
service started through the image's entrypoint from an unrelated working directory, serving /healthz,
/readyz and /metrics on LOYALTY_HTTP_PORT against the real Kafka and Postgres, and stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml
from deploy_chart import DEPLOY, REPO, SERVICES, secret_env_names

pytestmark = pytest.mark.integration

PACKAGES = [arg for s in SERVICES for arg in ("--package", f"loyalty-{s}")]
# uv rebuilds a local package only when its pyproject.toml changes; force fresh wheels from today's sources.
REBUILD = [arg for p in ("contracts", "kit", *SERVICES) for arg in ("--reinstall-package", f"loyalty-{p}")]


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("image-venv") / "venv"
    result = subprocess.run(
        ["uv", "sync", "--frozen", "--no-dev", "--no-editable", "--quiet", *PACKAGES, *REBUILD],
        cwd=REPO, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return venv


@pytest.fixture(scope="module")
def service_dsn(pg_admin_dsn: str) -> Iterator[str]:
    database = f"deploy_boot_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    parts = urlsplit(pg_admin_dsn)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_boots_the_service_as_the_image_would(
    runtime_venv: Path, service_dsn: str, kafka_bootstrap: str, tmp_path: Path, service: str
) -> None:
    port = free_port()
    env = {
        "PATH": f"{runtime_venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOYALTY_HTTP_PORT": str(port),
        "LOYALTY_HTTP_HOST": "127.0.0.1",
        "LOYALTY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LOYALTY_PG_DSN": service_dsn,
        "LOYALTY_PROGRAMS_DIR": str(REPO / "programs"),
        "LOYALTY_CONSUMER_GROUP": f"deploy-boot-{service}-{uuid.uuid4().hex[:8]}",
        "HOME": str(tmp_path),
    }
    for program in sorted((REPO / "programs").glob("*.yaml")):
        for name in secret_env_names(yaml.safe_load(program.read_text())):
            env[name] = f"test-secret-{uuid.uuid4().hex}"
    log = tmp_path / "service.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), service],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{service} exited {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                ready = get(f"{base}/readyz")
            except OSError:
                ready = (0, "not listening")
            if ready[0] == 200:
                break
            time.sleep(0.5)
        assert ready[0] == 200, f"{service} never ready: {ready}\n{log.read_text()[-3000:]}"
        assert get(f"{base}/healthz")[0] == 200
        status, metrics = get(f"{base}/metrics")
        assert status == 200 and "loyalty_batch_seconds" in metrics
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"{service} ignored SIGTERM for 30 s:\n{log.read_text()[-3000:]}")
    assert code in (0, -signal.SIGTERM), f"{service} exit code {code}:\n{log.read_text()[-3000:]}"
