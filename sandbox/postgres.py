"""PostgreSQL for the sandbox's Prefect server, as production runs it.

Debian's ``postgresql`` binaries, one cluster with its data under
``<state>/postgres``, listening on 127.0.0.1 only, run as the ``postgres``
system user (PostgreSQL refuses to run as root). The choice of database is
remembered in ``<state>/database`` so a later plain ``up`` (every test session
calls it) keeps the Prefect server on the database it was asked for.

The Prefect role's password is made at first start and kept in
``<state>/postgres/password`` (mode 0600); it is never printed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

from sandbox import procs
from sandbox.engine import SandboxError
from sandbox.layout import Layout, child_env

Database = Literal["sqlite", "postgres"]
PG_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"
DB_NAME = "prefect"
DB_ROLE = "prefect"


def wanted_database(lay: Layout, asked: Database | None) -> Database:
    """ASKED when given (and remembered), else $SANDBOX_DATABASE, else what was asked last, else SQLite.

    SANDBOX_DATABASE=postgres lets a fresh sandbox (a test session's own) start on Postgres.
    """
    path = lay.state / "database"
    from_env = os.environ.get("SANDBOX_DATABASE", "").strip().lower()
    if asked is None and from_env in ("sqlite", "postgres"):
        asked = "postgres" if from_env == "postgres" else "sqlite"
    if asked is not None:
        lay.state.mkdir(parents=True, exist_ok=True)
        path.write_text(asked + "\n")
        return asked
    try:
        return "postgres" if path.read_text().strip() == "postgres" else "sqlite"
    except OSError:
        return "sqlite"


def home(lay: Layout) -> Path:
    return lay.state / "postgres"


def data_dir(lay: Layout) -> Path:
    return home(lay) / "data"


def socket_dir(lay: Layout) -> Path:
    return home(lay) / "run"


def bin_dir() -> Path | None:
    """The newest installed server's bin directory (e.g. /usr/lib/postgresql/15/bin)."""
    found = sorted(PG_ROOT.glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


def missing_packages() -> list[str]:
    return [] if bin_dir() is not None else ["postgresql"]


def healthy(lay: Layout) -> bool:
    """pg_isready over TCP on the sandbox's port: the server accepts connections."""
    pg = bin_dir()
    if pg is None or not procs.port_open(lay.postgres_port):
        return False
    done = subprocess.run(
        [str(pg / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(lay.postgres_port), "-t", "2"],
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode == 0


def password(lay: Layout) -> str:
    """The Prefect role's password, made once."""
    path = home(lay) / "password"
    try:
        return path.read_text().strip()
    except OSError:
        pass
    home(lay).mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def connection_url(lay: Layout) -> str:
    """What PREFECT_API_DATABASE_CONNECTION_URL is set to (holds the password: never log it)."""
    return f"postgresql+asyncpg://{DB_ROLE}:{password(lay)}@127.0.0.1:{lay.postgres_port}/{DB_NAME}"


def _as_postgres() -> tuple[int, int] | None:
    """(uid, gid) of the postgres system user when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise SandboxError(
            f"no '{SYSTEM_USER}' system user; install Debian's postgresql package"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _run(argv: list[str], lay: Layout, what: str) -> None:
    ids = _as_postgres()
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=child_env(),
        user=ids[0] if ids else None, group=ids[1] if ids else None, cwd=home(lay),
    )  # fmt: skip
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        raise SandboxError(f"postgres: {what} failed ({tail}); see {lay.log('postgres')}")


def init_cluster(lay: Layout) -> None:
    """initdb once: trust on the private unix socket, passwords over TCP, loopback only."""
    pg = bin_dir()
    if pg is None:
        raise SandboxError("PostgreSQL is not installed; run `apt-get install postgresql`")
    for d in (home(lay), socket_dir(lay)):
        d.mkdir(parents=True, exist_ok=True)
    ids = _as_postgres()
    if ids:
        for d in (home(lay), socket_dir(lay)):
            os.chown(d, *ids)
    socket_dir(lay).chmod(0o700)  # trust on the socket is only for its owner (and root)
    if (data_dir(lay) / "PG_VERSION").exists():
        return
    shutil.rmtree(data_dir(lay), ignore_errors=True)  # a half-made cluster from an interrupted up
    _run(
        [str(pg / "initdb"), "-D", str(data_dir(lay)), "-U", SYSTEM_USER, "-E", "UTF8",
         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"],
        lay, "initdb",
    )  # fmt: skip


def server_argv(lay: Layout) -> list[str]:
    pg = bin_dir()
    assert pg is not None
    return [
        str(pg / "postgres"), "-D", str(data_dir(lay)), "-p", str(lay.postgres_port),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir(lay)}",
        "-c", "max_connections=200", "-c", "fsync=off", "-c", "synchronous_commit=off",
    ]  # fmt: skip


def start(lay: Layout) -> procs.Recorded:
    """Start the server detached as the postgres user; returns what was recorded."""
    ids = _as_postgres()
    proc = procs.start_detached(
        server_argv(lay), env=child_env(), log=lay.log("postgres"), cwd=home(lay),
        user=ids[0] if ids else None, group=ids[1] if ids else None,
    )  # fmt: skip
    procs.write_pidfile(lay.pidfile("postgres"), proc.pid)
    rec = procs.read_pidfile(lay.pidfile("postgres"))
    assert rec is not None
    return rec


def ensure_database(lay: Layout) -> None:
    """The prefect role (with the sandbox's password) and database; idempotent."""
    pg = bin_dir()
    assert pg is not None
    psql = [str(pg / "psql")] if (pg / "psql").exists() else ["psql"]
    base = [*psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir(lay)),
            "-p", str(lay.postgres_port), "-U", SYSTEM_USER, "-d", "postgres"]  # fmt: skip
    secret = password(lay).replace("'", "''")
    role_sql = (
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_ROLE}') "
        f"THEN CREATE ROLE {DB_ROLE} LOGIN; END IF; END$$;"
        f"ALTER ROLE {DB_ROLE} PASSWORD '{secret}';"
    )
    _run_sql(base, role_sql, lay, "creating the prefect role")
    exists = subprocess.run(
        [*base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"],
        check=False, capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    if exists.stdout.strip() != "1":
        _run_sql(base, f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE};", lay, "creating the database")


def _run_sql(base: list[str], sql: str, lay: Layout, what: str) -> None:
    done = subprocess.run(
        base, input=sql, check=False, capture_output=True, text=True, env=child_env()
    )
    if done.returncode != 0:
        # psql echoes no statement text on error with -q; the message names the object only.
        tail = " ".join(done.stderr.strip().splitlines()[-1:]).replace(password(lay), "***")
        raise SandboxError(f"postgres: {what} failed ({tail})")


def stop(lay: Layout) -> bool:
    """Fast shutdown (SIGINT: roll back open transactions, then exit); SIGKILL as a last resort."""
    rec = procs.read_pidfile(lay.pidfile("postgres"))
    if rec is None or not procs.alive(rec):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGINT)
    deadline = time.monotonic() + 20
    while procs.alive(rec) and time.monotonic() < deadline:
        time.sleep(0.1)
    procs.stop(rec, timeout=5)
    return True
