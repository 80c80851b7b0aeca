"""A throwaway Postgres cluster from the installed binaries (installs Debian's package when missing)."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import StackError, ensure_port_free, free_port, port_open, spawn, tail, terminate

# initdb refuses to run as root, so as root the cluster runs as this unprivileged system user.
PG_OS_USER = "loyaltypg"


def find_pg_bindir() -> Path | None:
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    candidates += [Path(p) for p in versions]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    return None


def ensure_pg_binaries() -> Path:
    bindir = find_pg_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("Postgres server binaries (initdb, postgres) were not found on PATH or under "
                         "/usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install -y postgresql)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    for cmd in (["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise StackError(f"installing Debian's postgresql package failed ({' '.join(cmd)}):\n"
                             f"{(proc.stdout + proc.stderr)[-2000:]}")
    bindir = find_pg_bindir()
    if bindir is None:
        raise StackError("apt-get installed postgresql but initdb/postgres are still missing")
    return bindir


def _os_user() -> str | None:
    """The OS user the cluster runs as: ourselves, or a dedicated system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise StackError(f"creating the system user {PG_OS_USER} for Postgres failed: "
                             f"{proc.stderr.strip()}") from None
    return PG_OS_USER


def _check_traversable(path: Path, user: str) -> None:
    # The cluster's OS user must be able to reach its data dir through every parent directory.
    for parent in [path, *path.parents]:
        st = parent.stat()
        if not st.st_mode & 0o001:
            raise StackError(f"Postgres runs as the unprivileged user {user}, which cannot enter {parent} "
                             f"(mode {oct(st.st_mode & 0o777)}); choose a stack dir outside it or chmod o+x it")


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@dataclass
class PostgresProcess:
    pid: int
    port: int
    password: str
    data_dir: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"


def start_postgres(data_dir: Path, *, port: int | None = None, tied_to_parent: bool,
                   ready_timeout_s: float = 60.0, fast: bool = False) -> PostgresProcess:
    bindir = ensure_pg_binaries()
    if port is not None:
        ensure_port_free(port, "Postgres")
    port = port or free_port()
    user = _os_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o755)
    cluster = data_dir / "cluster"
    sock = data_dir / "sock"
    for d in (cluster, sock):
        if d.exists():
            shutil.rmtree(d)
    sock.mkdir()
    password = secrets.token_hex(12)
    pwfile = data_dir / "pwfile"
    pwfile.write_text(password + "\n")
    if user:
        _check_traversable(data_dir, user)
        _chown_tree(data_dir, user)
    init = subprocess.run([str(bindir / "initdb"), "-D", str(cluster), "-U", "postgres", "-E", "UTF8",
                           "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256",
                           f"--pwfile={pwfile}"], capture_output=True, text=True, user=user, check=False)
    pwfile.unlink()
    if init.returncode != 0:
        raise StackError(f"initdb in {cluster} failed:\n{(init.stdout + init.stderr)[-2000:]}")
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(sock),
        "max_connections": "300",
        "shared_buffers": "256MB",
        "max_wal_size": "2GB",
        "log_min_messages": "warning",
    }
    if fast:
        # Throwaway test clusters trade durability for speed; never used for the run command.
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    argv = [str(bindir / "postgres"), "-D", str(cluster)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    log = data_dir / "postgres.log"
    log.touch()
    if user:
        _chown_tree(data_dir, user)
    proc = spawn(argv, log_file=log, user=user, tied_to_parent=tied_to_parent)
    pg = PostgresProcess(pid=proc.pid, port=port, password=password, data_dir=data_dir)
    deadline = time.monotonic() + ready_timeout_s
    last_error = "port not open yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"Postgres exited with code {proc.returncode} before it was ready. "
                             f"Last lines of {log}:\n{tail(log)}")
        if port_open("127.0.0.1", port):
            try:
                asyncio.run(ping_postgres(pg.dsn))
                return pg
            except Exception as exc:  # still starting up
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    terminate(proc.pid, grace_s=5)
    raise StackError(f"Postgres on port {port} was not ready after {ready_timeout_s:.0f}s ({last_error}). "
                     f"Last lines of {log}:\n{tail(log)}")


async def ping_postgres(dsn: str, timeout_s: float = 5.0) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        return str(await conn.fetchval("select version()"))
    finally:
        await conn.close()


def stop_postgres(pid: int) -> None:
    # SIGINT is Postgres' "fast shutdown": it ends sessions and checkpoints; no stale postmaster.pid remains.
    import signal

    terminate(pid, sig=signal.SIGINT, grace_s=30, expect_in_cmdline="postgres")
