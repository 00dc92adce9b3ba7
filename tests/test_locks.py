"""The per-service release slot against the real Prefect server: never shared, never held by the dead."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import certifi
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate, VariableCreate, VariableUpdate
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings
from prefect.states import Cancelling, Running

from sandbox.prefect_weather import PrefectWeather
from tasks.core.errors import DeployError
from tasks.release import locks
from tasks.release.locks import (
    RunStates,
    StopWatch,
    _free_dead_holder,
    commit_of_run,
    heartbeat_name,
    lock_name,
    read_heartbeat,
    service_lock,
)

ROOT = Path(__file__).resolve().parents[1]
STALE = 5.0

HOLDER = textwrap.dedent(
    """
    import sys, time
    from prefect import flow
    from prefect.runtime import flow_run
    from tasks.release.locks import service_lock

    @flow(name="lock-holder")
    def hold(service: str) -> None:
        with service_lock(service, str(flow_run.get_id()), stale_after=float(sys.argv[2])):
            print("HOLDING", flow_run.get_id(), flush=True)
            time.sleep(600)

    hold(sys.argv[1])
    """
)


@flow(name="lock-taker")
def take(service: str) -> dict[str, str | None]:
    with service_lock(service, str(flow_run.get_id()), stale_after=STALE) as held:
        return {"me": str(flow_run.get_id()), "took_over_from": held.took_over_from}


def cleanup(service: str) -> None:
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(lock_name(service))
        if client.read_variable_by_name(heartbeat_name(service)) is not None:
            client.delete_variable_by_name(heartbeat_name(service))


def start_holder(service: str, **env: str) -> tuple[subprocess.Popen[str], str]:
    """A process holding SERVICE's slot (HOLDER, with ENV added): the process and its run's id, once it holds."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, service, str(STALE)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.stdout is not None
    line = ""
    while not line.startswith("HOLDING"):
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("the holder exited before taking the slot")
    return proc, line.split()[1]


def test_a_killed_holder_frees_the_service_and_is_marked_crashed() -> None:
    service = f"lock-{uuid.uuid4().hex[:8]}"
    proc, dead_run = start_holder(service)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        got = take(service)

        assert got["took_over_from"] == dead_run
        with get_client(sync_client=True) as client:
            dead = client.read_flow_run(UUID(dead_run))
            assert dead.state is not None and dead.state.name == "Crashed", dead.state
            assert "no heartbeat" in (dead.state.message or "")
            assert read_heartbeat(client, service) is None, "the taker removes its heartbeat on release"
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup(service)


def test_a_holder_whose_orchestrator_answers_half_its_calls_with_503_keeps_the_service() -> None:
    """A waiting run judges a holder dead by its heartbeat's age. Prefect's client pauses 2, 4, 8 ... s
    before retrying a 503, 502 or 429, so a beat that sat in such a pause went stale and the waiting run
    took the service from a live release. The beats retry within the beat instead: once the holder holds,
    the API answers half of its calls with a fault, and the judge never frees the holder's slot."""
    service = f"lock-{uuid.uuid4().hex[:8]}"
    upstream = os.environ["PREFECT_API_URL"].removesuffix("/api")
    with PrefectWeather(upstream, 0.0, seed=11) as weather:
        # PREFECT_CLIENT_MAX_RETRIES as `ecs-pipeline` sets it for its runs
        proc, _ = start_holder(service, PREFECT_API_URL=f"{weather.url}/api", PREFECT_CLIENT_MAX_RETRIES="7")
        try:
            weather.rate = 0.5  # the holder's beats from now on
            ages: list[float] = []
            with get_client(sync_client=True) as client:  # the judge reaches the server directly
                until = time.monotonic() + 2 * STALE
                while time.monotonic() < until:
                    assert _free_dead_holder(client, service, STALE, None) is None, f"a live holder was freed: {ages}"
                    beat = read_heartbeat(client, service)
                    assert beat is not None
                    ages.append(round(time.time() - float(beat["at"]), 1))
                    time.sleep(0.25)
            assert proc.poll() is None, "the holder is alive throughout"
            assert sum(weather.hits.values()) >= 5, weather.hits  # its beats did meet the weather
            assert max(ages) < STALE, ages
        finally:
            proc.kill()
            proc.wait(timeout=10)
            cleanup(service)


WATCHER = textwrap.dedent(
    """
    import sys
    from prefect import flow
    from prefect.runtime import flow_run
    from tasks.release.locks import service_lock

    @flow(name="lock-holder")
    def hold(service: str) -> None:
        with service_lock(service, str(flow_run.get_id()), stale_after=float(sys.argv[2])) as held:
            print("HOLDING", flow_run.get_id(), held.lease_id, flush=True)
            print("LOST" if held.lost.wait(120) else "KEPT", flush=True)

    hold(sys.argv[1])
    """
)


def test_a_holder_beats_without_reading_its_heartbeat_and_learns_at_once_that_another_run_took_the_service() -> None:
    """A beat renews the lease and writes the heartbeat: two calls. The heartbeat is read only when Prefect
    answers the renewal 410 Gone: a lease that ran out while the heartbeat still names it keeps the service;
    a lease revoked by a run that found the holder stale, and a heartbeat naming that run, end the hold.
    A heartbeat deleted from outside is made again at the next beat. The slot's limit is made by the first
    run that finds none, and not looked up by the runs after it."""
    service = f"lock-{uuid.uuid4().hex[:8]}"
    variable, limit = f"/api/variables/name/{heartbeat_name(service)}", "/api/v2/concurrency_limits/"
    upstream = os.environ["PREFECT_API_URL"].removesuffix("/api")
    with PrefectWeather(upstream, 0.0) as weather:
        proc, lines = start_watcher(service, weather.url)
        try:
            lease = lines.get(timeout=60).split()[2]
            made = Counter(weather.routes)
            assert made[("POST", f"{limit}increment-with-lease")] == 2, made  # none yet: an empty lease, then one
            assert made[("POST", limit)] == 1 and made[("GET", variable)] == 1, made
            before = Counter(weather.routes)
            time.sleep(4.5)  # a beat a second (STALE / 6, at least 1 s)
            beats = Counter(weather.routes) - before
            renewals = beats[("POST", f"{limit}leases/{lease}/renew")]
            assert renewals >= 3, beats
            assert beats[("PATCH", variable)] == renewals, beats
            assert beats[("GET", variable)] == 0, beats

            with get_client(sync_client=True) as client:
                client.delete_variable_by_name(heartbeat_name(service))  # from outside: the next beat makes it
                until = time.monotonic() + 3
                while (read_heartbeat(client, service) or {}).get("lease") != lease:
                    assert time.monotonic() < until, "the heartbeat was not made again"
                    time.sleep(0.1)

                # The lease runs out while the heartbeat is still the holder's.
                client.release_concurrency_slots_with_lease(UUID(lease))
                before = Counter(weather.routes)
                time.sleep(2.5)
                with pytest.raises(queue.Empty):
                    lines.get_nowait()
                assert (Counter(weather.routes) - before)[("GET", variable)] >= 1, "read once the renewal is refused"
                beat = read_heartbeat(client, service)
                assert beat is not None and beat["lease"] == lease and time.time() - beat["at"] < 2, beat

                taker = {"run": str(uuid.uuid4()), "lease": str(uuid.uuid4()), "at": time.time()}
                client.update_variable(VariableUpdate(name=heartbeat_name(service), value=taker))
                assert lines.get(timeout=5).strip() == "LOST"
                assert proc.wait(timeout=30) == 0
                assert read_heartbeat(client, service) == taker, "the holder leaves the taker's heartbeat alone"
                client.delete_variable_by_name(heartbeat_name(service))  # the taker's release ends

            before = Counter(weather.routes)
            proc, lines = start_watcher(service, weather.url)  # the limit exists now: asked once, not read
            lines.get(timeout=60)
            asked = Counter(weather.routes) - before
            assert asked[("POST", f"{limit}increment-with-lease")] == 1, asked
            assert not [route for route in asked if route[1].startswith(limit) and route[0] == "GET"], asked
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            cleanup(service)


def start_watcher(service: str, api: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """WATCHER holding SERVICE's slot through the Prefect API at API: the process and its output's lines."""
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, service, str(STALE)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                         "PREFECT_API_URL": f"{api}/api"})
    lines: queue.Queue[str] = queue.Queue()
    out = proc.stdout
    assert out is not None

    def read() -> None:
        for line in out:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def test_a_disabled_or_widened_limit_is_refused_while_another_run_holds_the_service() -> None:
    """A limit a person disabled, or gave a second slot, hands the slot to a second run while the first
    releases: the second sees the first's fresh heartbeat, reads the limit and stops, naming the fix."""
    service = f"lock-{uuid.uuid4().hex[:8]}"
    name = lock_name(service)
    proc, holder = start_holder(service)
    try:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=False))
            with pytest.raises(DeployError, match=f"{name} is disabled") as disabled:
                take(service)
            assert holder in str(disabled.value) and f"prefect gcl enable {name}" in str(disabled.value)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True, limit=2))
            with pytest.raises(DeployError, match="set to 2 slots") as widened:
                take(service)
            assert f"prefect gcl update {name} --limit 1" in str(widened.value)
            limit = client.read_global_concurrency_limit_by_name(name)
            assert limit.active_slots == 1, "the refused run gave its slot back"
            beat = read_heartbeat(client, service)
            assert beat is not None and beat["run"] == holder, "the holder keeps the service"
            assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
        cleanup(service)


def test_two_live_holders_never_overlap() -> None:
    service = f"lock-{uuid.uuid4().hex[:8]}"
    inside: list[int] = []
    overlaps: list[int] = []

    @flow(name="lock-worker")
    def work() -> None:
        with service_lock(service, str(flow_run.get_id()), stale_after=STALE) as held:
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(STALE * 1.5)  # longer than the stale time: the heartbeat must keep it ours
            inside.pop()
            assert held.took_over_from is None

    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert overlaps == []
    finally:
        cleanup(service)


@flow(name="deploy-service-dead")
def never_ran(service: str) -> None:
    """Only a flow object to create the dead run from; it never runs."""


def test_a_dead_holder_whose_prefect_lease_ran_out_is_still_found() -> None:
    """The slot is free (Prefect's lease expired first) but the dead run's heartbeat is there: Crashed, named."""
    service = f"lock-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(never_ran, parameters={"service": service}, name=f"deploy {service}@abcdef1",
                                      state=Running())
        client.create_variable(VariableCreate(name=heartbeat_name(service), value={
            "run": str(dead.id), "lease": str(uuid.uuid4()), "at": time.time() - 10 * STALE}))
    try:
        got = take(service)

        assert got["took_over_from"] == str(dead.id)
        assert commit_of_run(str(dead.id)) == "abcdef1", "the commit the dead run was releasing"
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(dead.id).state
        assert state is not None and state.name == "Crashed", state
    finally:
        cleanup(service)


class CountingRunStates(RunStates):
    """RunStates that counts its reads of the API."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    def _read(self, run_ids: list[str]) -> dict[str, Any]:
        self.reads.append(sorted(run_ids))
        return super()._read(run_ids)


def test_the_releases_of_a_process_share_one_read_of_their_states_and_each_sees_its_own_cancel() -> None:
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run(take, parameters={"service": "x"}, state=Running()) for _ in range(3)]
        client.set_flow_run_state(runs[1].id, Cancelling(message="stop this one"), force=True)
    ids = [str(r.id) for r in runs]
    try:
        states = CountingRunStates()
        first = [states.state_of(i, every=3600) for i in ids]  # each new run is read at once, with the others
        assert states.reads == [ids[:1], sorted(ids[:2]), sorted(ids)]
        again = [states.state_of(i, every=3600) for i in ids]  # the last read answered all three
        assert len(states.reads) == 3
        assert [s.type.value if s else None for s in again] == [s.type.value if s else None for s in first]
        assert [s.type.value if s else None for s in again] == ["RUNNING", "CANCELLING", "RUNNING"]
        assert StopWatch(ids[1])() == "cancelled (stop this one)"
        assert StopWatch(ids[0])() is None
    finally:
        with get_client(sync_client=True) as client:
            for run in runs:
                client.delete_flow_run(run.id)


def test_the_heartbeats_tls_context_is_loaded_once_and_again_when_its_ca_file_is_rewritten(tmp_path: Path) -> None:
    """Each hold's beat client takes the context Prefect would load from PREFECT_API_SSL_CERT_FILE (its CA
    bundle: tens of milliseconds), loaded once per process, and again once the file changes (a rotated CA)."""
    ca = tmp_path / "api-ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: str(ca)}):
        first = locks._api_tls()
        assert locks._api_tls() is first
        ca.write_bytes(ca.read_bytes() + b"\n")
        assert locks._api_tls() is not first
