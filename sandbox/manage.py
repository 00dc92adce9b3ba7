"""`up`, `down` and `status` for the sandbox's processes.

Every component is checked by its health endpoint first and started only when
missing, so a second `up` is a quick no-op. `down` stops only what `up`
started, by the pid files under <state>/pids/, and never an engine or registry
that was already there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sandbox import engine, identities, postgres, prefect_db, procs
from sandbox.engine import SandboxError
from sandbox.layout import (
    REPO,
    Layout,
    admin_key,
    child_env,
    free_ports,
    layout,
    prefect_auth,
    read_env_file,
    write_env,
)
from sandbox.postgres import Database


@dataclass(frozen=True)
class Component:
    """One process of the sandbox: how to reach it and how to tell it is healthy."""

    name: str
    address: str
    healthy: Callable[[], bool]
    port: int | None = None


def components(lay: Layout, docker_host: str, database: Database = "sqlite") -> list[Component]:
    reg = f"http://127.0.0.1:{lay.registry_port}"
    aws = f"http://127.0.0.1:{lay.aws_port}"
    prefect = f"http://127.0.0.1:{lay.prefect_port}"
    found = [
        Component("engine", docker_host, lambda: engine.engine_answers(docker_host)),
        Component("registry", reg, lambda: procs.http_ok(reg + "/v2/"), lay.registry_port),
        Component("aws", aws, lambda: procs.http_ok(aws + "/_sandbox/health"), lay.aws_port),
        Component(
            "prefect", prefect, lambda: procs.http_ok(prefect + "/api/health"), lay.prefect_port
        ),
    ]
    if database == "postgres":
        pg = f"postgresql://127.0.0.1:{lay.postgres_port}/{postgres.DB_NAME}"
        found.append(Component("postgres", pg, lambda: postgres.healthy(lay), lay.postgres_port))
    return found


def prefect_database(lay: Layout) -> str | None:
    """The database the Prefect server `up` started uses ('sqlite'/'postgres'), None if unknown."""
    try:
        return lay.pidfile("prefect").with_suffix(".db").read_text().strip() or None
    except OSError:
        return None


def current_docker_host(lay: Layout) -> str:
    """The engine the sandbox uses: recorded by `up`, else the one it would pick."""
    try:
        recorded = lay.docker_host_file.read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    try:
        return engine.existing_engine(lay.state) or "unix://" + str(engine.own_socket(lay.state))
    except SandboxError:
        return os.environ.get("DOCKER_HOST", "")


@contextmanager
def _locked(lay: Layout) -> Iterator[None]:
    """Serialise `up`/`down`: test sessions may call `up` at the same moment."""
    lay.state.mkdir(parents=True, exist_ok=True)
    with open(lay.state / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def up(out: Callable[[str], None] = print, database: Database | None = None) -> float:
    """Start what is missing and write <state>/env; returns the seconds it took.

    DATABASE picks the Prefect server's database and is remembered; None keeps the last choice.
    """
    t0 = time.monotonic()
    lay = layout()
    with _locked(lay):
        for d in (lay.pids, lay.logs):
            d.mkdir(parents=True, exist_ok=True)
        db = postgres.wanted_database(lay, database)
        comps = {c.name: c for c in components(lay, current_docker_host(lay), db)}
        same_db = prefect_database(lay) in (None, db) if db == "sqlite" else prefect_database(lay) == db
        healthy = all(c.healthy() for c in comps.values())
        if healthy and same_db and engine.is_static_elf(engine.BUSYBOX):
            write_env(lay, comps["engine"].address, identities.ensure_deploy_user(lay))
            took = time.monotonic() - t0
            out(f"sandbox already up ({took:.2f} s); env in {lay.env_file}")
            return took
        if not same_db:
            _stop_prefect_for(lay, db, out)
        _start_all(lay, comps, out, db)
    took = time.monotonic() - t0
    out(f"sandbox up in {took:.1f} s; env in {lay.env_file}")
    return took


@dataclass
class _Launch:
    """A start `up` made or adopted: what to run again if an adopted start dies."""

    comp: Component
    argv: list[str]
    env: dict[str, str]
    rec: procs.Recorded | None
    fresh: bool


def _stop_prefect_for(lay: Layout, db: Database, out: Callable[[str], None]) -> None:
    """The Prefect server runs on the other database: stop ours so it starts again on DB."""
    rec = procs.read_pidfile(lay.pidfile("prefect"))
    if rec is None or not procs.alive(rec):
        return
    out(f"  prefect   restarting on {db} (was {prefect_database(lay) or 'unknown'})")
    procs.stop(rec)
    lay.pidfile("prefect").unlink(missing_ok=True)


def _ensure_postgres(lay: Layout, comp: Component) -> None:
    """Debian's PostgreSQL on loopback with its data under <state>/postgres, and the prefect database."""
    engine.apt_install(postgres.missing_packages())
    if not comp.healthy():
        rec = procs.read_pidfile(lay.pidfile("postgres"))
        if not procs.alive(rec):
            if procs.port_open(lay.postgres_port):
                raise SandboxError(
                    f"port {lay.postgres_port} is taken by another program that is not the "
                    "sandbox's postgres; stop it or set SANDBOX_POSTGRES_PORT to a free port"
                )
            postgres.init_cluster(lay)
            rec = postgres.start(lay)
        deadline = time.monotonic() + 60
        while not comp.healthy():
            if not procs.alive(rec):
                raise SandboxError(f"postgres exited while starting; see {lay.log('postgres')}")
            if time.monotonic() > deadline:
                raise SandboxError(f"postgres did not answer within 60 s; see {lay.log('postgres')}")
            time.sleep(0.2)
    postgres.ensure_database(lay)


def _start_all(
    lay: Layout, comps: dict[str, Component], out: Callable[[str], None], db: Database = "sqlite"
) -> None:
    t0 = time.monotonic()
    if db == "postgres":
        _ensure_postgres(lay, comps["postgres"])
    pg_ready = time.monotonic() - t0
    # Prefect is the slowest to come up (~17 s): start it before anything else.
    started: dict[str, _Launch | None] = {}
    new_database = False
    if db == "sqlite" and not comps["prefect"].healthy():
        home = lay.state / "prefect"
        new_database = not prefect_db.start_from_template(home) and not (home / prefect_db.FILE).exists()
    started["prefect"] = _ensure(lay, comps["prefect"], _prefect_argv(lay), _prefect_env(lay, db))
    if started["prefect"] is not None and started["prefect"].fresh:
        lay.pidfile("prefect").with_suffix(".db").write_text(db + "\n")

    need_registry = not comps["registry"].healthy()
    docker_host, started["engine"] = _start_engine(lay, need_registry=need_registry)
    _write_registry_config(lay)
    registry_argv = ["docker-registry", "serve", str(lay.state / "registry.yml")]
    started["registry"] = _ensure(lay, comps["registry"], registry_argv, child_env())
    comps["engine"] = components(lay, docker_host)[0]
    _wait(lay, comps["engine"], started.get("engine"), 60)
    ready = {"engine": time.monotonic() - t0, "postgres": pg_ready}

    aws_env = {
        **child_env(),
        "DOCKER_HOST": docker_host,
        "SANDBOX_REGISTRY": f"127.0.0.1:{lay.registry_port}",
        "SANDBOX_REGISTRY_STORAGE": str(lay.state / "registry"),
        "SANDBOX_TIME_SCALE": lay.time_scale,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        # Every call is judged against its signer's IAM policies, as an account judges it; only the
        # sandbox's own key (admin.env) is all-powerful.
        identities.ENFORCE_ENV: identities.enforcing(),
        "SANDBOX_ADMIN_ACCESS_KEY_IDS": admin_key(lay)[0],
    }
    started["aws"] = _ensure(lay, comps["aws"], _aws_argv(lay), aws_env)
    for name, budget in (("registry", 30), ("aws", 180), ("prefect", 240)):
        _wait(lay, comps[name], started.get(name), budget)
        ready[name] = time.monotonic() - t0
    if new_database:
        prefect_db.keep_as_template(lay.state / "prefect")
    write_env(lay, docker_host, identities.ensure_deploy_user(lay))
    for c in comps.values():
        rec = procs.read_pidfile(lay.pidfile(c.name))
        who = f"pid {rec.pid}" if procs.alive(rec) and rec else "not started by the sandbox"
        out(f"  {c.name:<9} {c.address}  ({who}; answering after {ready[c.name]:.1f} s)")


def _start_engine(lay: Layout, *, need_registry: bool = True) -> tuple[str, _Launch | None]:
    """The Debian packages the sandbox needs, and our own dockerd unless an engine answers: (DOCKER_HOST, its start)."""
    docker_host = engine.existing_engine(lay.state)
    own = "unix://" + str(engine.own_socket(lay.state))
    need_dockerd = docker_host is None and not engine.engine_answers(own)
    engine.apt_install(engine.missing_packages(need_dockerd=need_dockerd, need_registry=need_registry))
    docker_host = docker_host or own
    lay.docker_host_file.write_text(docker_host + "\n")
    if docker_host != own:
        return docker_host, None
    if not (engine.can_manage_packages() or engine.engine_answers(own)):
        raise SandboxError(
            "no Docker engine answers; start one and set DOCKER_HOST "
            "(e.g. unix:///var/run/docker.sock), or run the sandbox as root on Debian "
            "so it can start its own"
        )
    engine.own_socket(lay.state).parent.mkdir(parents=True, exist_ok=True)
    return docker_host, _ensure(lay, components(lay, docker_host)[0], engine.dockerd_argv(lay.state), child_env())


def engine_up(out: Callable[[str], None] = print) -> str:
    """Only the Docker engine, and every package the sandbox needs: what the test suite's sandboxes share.

    Each test session starts its own AWS endpoint, registry and Prefect server (tests/conftest.py); the
    outer ones would only cost their start before the first test and a few percent of a core while it
    runs. `down` stops the engine as it stops the rest. Returns its DOCKER_HOST.
    """
    t0 = time.monotonic()
    lay = layout()
    with _locked(lay):
        for d in (lay.pids, lay.logs):
            d.mkdir(parents=True, exist_ok=True)
        docker_host, launch = _start_engine(lay)
        _wait(lay, components(lay, docker_host)[0], launch, 60)
        _prefect_template(lay)
    out(f"engine {docker_host} answering, packages installed ({time.monotonic() - t0:.1f} s)")
    return docker_host


def _prefect_template(lay: Layout) -> None:
    """The empty Prefect database new servers start from (sandbox/prefect_db.py), made once when it is missing.

    ``up`` leaves it after its own server's first start; without that server the suite's sessions would each
    migrate a new database at once (about 9 CPU-seconds each). A server of its own on a free port makes it.
    """
    if prefect_db.template().is_file():
        return
    scratch = replace(lay, state=lay.state / "prefect-template", prefect_port=free_ports(1)[0])
    shutil.rmtree(scratch.state, ignore_errors=True)
    for d in (scratch.pids, scratch.logs):
        d.mkdir(parents=True, exist_ok=True)
    comp = next(c for c in components(scratch, "") if c.name == "prefect")
    launch = _launch(scratch, _Launch(comp, _prefect_argv(scratch), _prefect_env(scratch), None, fresh=True))
    try:
        _wait(scratch, comp, launch, 240)  # a failure names the log under scratch.state: kept
        prefect_db.keep_as_template(scratch.state / "prefect")
    finally:
        if launch.rec is not None:
            procs.stop(launch.rec)
    shutil.rmtree(scratch.state, ignore_errors=True)


def _ensure(lay: Layout, comp: Component, argv: list[str], env: dict[str, str]) -> _Launch | None:
    """Start COMP unless it answers or our earlier start of it is still coming up."""
    if comp.healthy():
        return None
    rec = procs.read_pidfile(lay.pidfile(comp.name))
    if procs.alive(rec):
        return _Launch(comp, argv, env, rec, fresh=False)
    return _launch(lay, _Launch(comp, argv, env, None, fresh=True))


def _launch(lay: Layout, launch: _Launch) -> _Launch:
    comp = launch.comp
    if comp.port is not None and procs.port_open(comp.port):
        var = {"aws": "SANDBOX_AWS_PORT", "registry": "SANDBOX_REGISTRY_PORT"}.get(
            comp.name, "SANDBOX_PREFECT_PORT"
        )
        raise SandboxError(
            f"port {comp.port} is taken by another program that is not a healthy {comp.name}; "
            f"stop it or set {var} to a free port"
        )
    proc = procs.start_detached(launch.argv, env=launch.env, log=lay.log(comp.name), cwd=REPO)
    procs.write_pidfile(lay.pidfile(comp.name), proc.pid)
    launch.rec, launch.fresh = procs.read_pidfile(lay.pidfile(comp.name)), True
    return launch


def _wait(lay: Layout, comp: Component, launch: _Launch | None, budget: float) -> None:
    """Poll COMP's health; an adopted start that dies (it was stopping) is started again once."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if comp.healthy():
            return
        if launch is not None and not procs.alive(launch.rec):
            if launch.fresh:
                raise SandboxError(f"{comp.name} exited while starting; see {lay.log(comp.name)}")
            time.sleep(0.5)  # let a stopping process release its port
            _launch(lay, launch)
        time.sleep(0.2)
    raise SandboxError(
        f"{comp.name} did not become healthy at {comp.address} within {budget:.0f} s; "
        f"see {lay.log(comp.name)}"
    )


def _prefect_argv(lay: Layout) -> list[str]:
    """`prefect server start`, by sandbox.prefect_server: on SQLite its writers wait their turn (busy timeout)."""
    return [sys.executable, "-m", "sandbox.prefect_server", "--host", "127.0.0.1", "--port", str(lay.prefect_port)]


def _prefect_env(lay: Layout, db: Database = "sqlite") -> dict[str, str]:
    home = lay.state / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in child_env().items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true",
        PREFECT_SERVER_UI_ENABLED="true",
        # The UI's own API calls: without this they go to :4200, another sandbox's server or none.
        PREFECT_UI_API_URL=f"http://127.0.0.1:{lay.prefect_port}/api",
        # Events reach the UI (and anything reading them back) within a second, not Prefect's default 5 s.
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="1",
        # Task-run states are written in batches, at most a second late, as events are above: Prefect's
        # default writes each of a release's ~27 state events in a transaction of its own (a task-sets
        # release: 0.55 CPU-s of the server's before, 0.45 after; bench/bench_cost.py).
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="50",
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL="1",
        # Basic auth on the API (health and readiness probes stay open): see prefect_auth.
        PREFECT_SERVER_API_AUTH_STRING=prefect_auth(lay),
    )
    if db == "postgres":
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.connection_url(lay)
    return env


def _aws_argv(lay: Layout) -> list[str]:
    return [
        sys.executable, "-m", "sandbox.server", "--host", "127.0.0.1",
        "--port", str(lay.aws_port), "--state-dir", str(lay.state / "aws"),
    ]  # fmt: skip


def _write_registry_config(lay: Layout) -> None:
    """The registry's own config: loopback only, storage under the state dir, no auth."""
    storage = lay.state / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    (lay.state / "registry.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{lay.registry_port}\n"
    )


def load_env(admin: bool = False) -> dict[str, str]:
    """The sandbox's <state>/env as a dict; fails with what to run when it is missing.

    ADMIN: with the sandbox's own keys (admin.env) in place of the deploy user's, for seeding and set-up.
    """
    lay = layout()
    if not lay.env_file.is_file():
        raise SandboxError(f"{lay.env_file} is missing; run `python -m sandbox up` first")
    env = read_env_file(lay.env_file)
    if admin:
        env.update(read_env_file(lay.admin_env_file))
    return env


def down(out: Callable[[str], None] = print) -> None:
    """Stop what `up` started, newest first; leave engines and registries it found running."""
    lay = layout()
    with _locked(lay):
        for name in ("aws", "prefect", "postgres", "registry", "engine"):
            path = lay.pidfile(name)
            rec = procs.read_pidfile(path)
            if name == "postgres" and rec is None:
                continue  # never asked for: nothing to say
            if name == "postgres" and procs.alive(rec) and rec is not None:
                postgres.stop(lay)
                out(f"  {name:<9} stopped (pid {rec.pid})")
            elif procs.alive(rec) and rec is not None:
                procs.stop(rec, timeout=30 if name == "engine" else 15)
                out(f"  {name:<9} stopped (pid {rec.pid})")
                if name == "engine":
                    # Our dockerd's runtime dir under /run (tmpfs) would otherwise pile up.
                    shutil.rmtree(engine.exec_root(lay.state), ignore_errors=True)
            else:
                out(f"  {name:<9} not running from this sandbox; left alone")
            path.unlink(missing_ok=True)
        lay.pidfile("prefect").with_suffix(".db").unlink(missing_ok=True)
        lay.env_file.unlink(missing_ok=True)
        lay.deploy_key_file.unlink(missing_ok=True)  # its user goes with the server's memory
        lay.docker_host_file.unlink(missing_ok=True)


def status(out: Callable[[str], None] = print) -> bool:
    """Print each component's pid, address and health; True when all are healthy."""
    lay = layout()
    ok = True
    out(f"{'component':<10}{'pid':<9}{'health':<8}address")
    db = postgres.wanted_database(lay, None)
    for comp in components(lay, current_docker_host(lay), db):
        healthy = comp.healthy()
        ok &= healthy
        rec = procs.read_pidfile(lay.pidfile(comp.name))
        pid = str(rec.pid) if rec and procs.alive(rec) else "-"
        note = "" if pid != "-" or not healthy else "  (not started by the sandbox)"
        if comp.name == "prefect" and healthy:
            note += f"  (database: {prefect_database(lay) or db})"
        out(f"{comp.name:<10}{pid:<9}{'ok' if healthy else 'DOWN':<8}{comp.address}{note}")
    has_busybox = engine.is_static_elf(engine.BUSYBOX)
    ok &= has_busybox
    state = "ok" if has_busybox else "MISSING"
    out(f"{'busybox':<10}{'-':<9}{state:<8}{engine.BUSYBOX} (static, for FROM scratch images)")
    return ok
