"""Release manifests: built from what AWS serves, kept as files, read back by run and by time; a digest gone
from ECR refused before anything moves; a change by hand shown as drift; a fleet put back on a manifest.

Three copies of one service (``sandbox seed --copies``) built from one repository, released once as a fleet
(v1) for the module: its manifest is the one the later tests read, refuse, drift from and restore.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.cli import main
from flows.fleet import release_fleet
from flows.operations import MANIFEST_DRIFT_SCHEMA
from harness.fleet_repo import base_yaml, commit, monorepo, remove_fleet
from harness.git import git
from harness.services import aws
from sandbox.seed_fleet import seed_fleet
from tasks.aws.clients import AwsClients
from tasks.config.models import load_all_services
from tasks.core.errors import ConfigError
from tasks.core.settings import Settings
from tasks.release.manifest import (
    FLEET_KEY,
    MANIFEST_SCHEMA,
    Manifest,
    ManifestSettings,
    ManifestStore,
    ServiceEntry,
    parse_manifest,
    record_fleet_manifest,
    record_release_manifest,
)
from tasks.release.manifest_restore import manifest_drift, restore_plan
from tests.test_fleet_order_release import deployments
from tests.test_provenance import mutating_calls_since, request_log_position
from tests.test_status_all import schema_errors

DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
SHA_A = "1" * 40


# -- pure: build, serialise, read back --------------------------------------------------------------------------


def manifest(run: str, at: datetime, revision: int = 5, digest: str = DIGEST_A) -> Manifest:
    entry = ServiceEntry(service="api", commit=SHA_A, image=f"123.dkr.ecr.us-east-1.amazonaws.com/api@{digest}",
                         digest=digest, task_definition=f"arn:aws:ecs:us-east-1:123:task-definition/api:{revision}",
                         strategy="task-sets")
    return Manifest(kind="fleet", run_id=run, created_at=at.isoformat(), services=[entry])


def local_store(folder: Path) -> ManifestStore:
    return ManifestStore(ManifestSettings.model_validate({"PREFECT_LOCAL_STORAGE_PATH": str(folder)}))


def test_manifests_read_back_by_run_and_by_time(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    t0 = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)
    first, second = manifest("run-1", t0), manifest("run-2", t0 + timedelta(minutes=5), revision=7)
    for m in (second, first):  # written out of order: names sort by time, the pointer stays on the newer
        store.write(m)
    assert store.by_run("run-1") == first
    assert store.at() == second
    assert store.at(t0 + timedelta(minutes=4)) == first
    assert store.at(t0 + timedelta(minutes=5)) == second  # "at or before"
    with pytest.raises(ConfigError, match="no release manifest at or before 2026-12-06T16:59"):
        store.at(t0 - timedelta(minutes=1))
    with pytest.raises(ConfigError, match=f"no release manifest of run run-3 in {tmp_path}"):
        store.by_run("run-3")
    newest = store.newest_by_service(["api", "web"])
    assert list(newest) == ["api"] and newest["api"][0] == second
    assert parse_manifest(second.model_dump_json(), "x.json") == second
    assert schema_errors(second.model_dump(), MANIFEST_SCHEMA) == []


def test_a_file_that_is_no_manifest_names_the_field(tmp_path: Path) -> None:
    data = manifest("run-1", datetime.now(UTC)).model_dump()
    del data["services"][0]["digest"]
    with pytest.raises(ConfigError, match=r"bad\.json is not a release manifest \(services\.0\.digest: Field required"):
        parse_manifest(json.dumps(data), "bad.json")


def test_drift_against_the_manifest_names_the_run_time_and_revisions() -> None:
    m = manifest("run-1", datetime(2026, 12, 6, 17, 0, tzinfo=UTC))
    same = {"sha": SHA_A, "image": m.services[0].image, "task_definition": m.services[0].task_definition}
    assert manifest_drift((m, m.services[0]), same) == {
        "run_id": "run-1", "run_url": None, "created_at": m.created_at, "drifted": False, "detail": None}
    moved = {**same, "task_definition": "arn:aws:ecs:us-east-1:123:task-definition/api:7"}
    found = manifest_drift((m, m.services[0]), moved, in_flight=True)
    assert found is not None and schema_errors(found, MANIFEST_DRIFT_SCHEMA) == []
    assert found is not None and found["detail"] == (
        f"differs from manifest of run run-1 at {m.created_at}: live api:7, manifest api:5; a release is in flight")
    assert manifest_drift(None, same) is None


# -- against the sandbox ----------------------------------------------------------------------------------------


def test_manifests_kept_in_s3_read_back_the_same() -> None:
    s3, bucket = aws("s3"), f"manifests-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    settings = ManifestSettings.model_validate({"ECS_PIPELINE_MANIFEST_BUCKET": bucket,
                                                "ECS_PIPELINE_MANIFEST_PREFIX": "prod/"})
    store = ManifestStore(settings, s3)
    t0 = datetime.now(UTC)
    first, second = manifest("run-1", t0), manifest("run-2", t0 + timedelta(seconds=1), revision=6)
    try:
        assert store.write(first) == f"s3://{bucket}/prod/{first.file_name()}"
        store.write(second)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
        assert keys == [f"prod/{first.file_name()}", f"prod/{second.file_name()}", "prod/latest/api"]
        assert store.by_run("run-1") == first and store.at() == second and store.at(t0) == first
        assert store.newest_by_service(["api", "web"]) == {"api": (second, second.services[0])}
    finally:
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("manifest-fleet")
    repo = monorepo(base)
    commit(repo, "v1")
    folder = base / "deployments"
    made = seed_fleet(base_yaml(base, repo), 3, folder)
    request.config.add_cleanup(lambda: remove_fleet(made))
    with deployments(folder):
        state = release_fleet(max_parallel=3, return_state=True)
        assert state.is_completed(), state.message
        configs = sorted(load_all_services(folder), key=lambda c: c.name)
        clients = AwsClients(Settings())
        m1 = record_fleet_manifest(configs, clients, "fleet-v1")
        assert m1 is not None
        yield {"repo": repo, "folder": folder, "configs": configs, "clients": clients, "v1": m1,
               "v1_sha": git(repo, "rev-parse", "HEAD"), "base": base}


def test_a_fleets_manifest_lists_what_aws_serves(fleet: dict[str, Any]) -> None:
    m1: Manifest = fleet["v1"]
    assert [e.service for e in m1.services] == [c.name for c in fleet["configs"]]
    for cfg, e in zip(fleet["configs"], m1.services, strict=True):
        assert e.commit == fleet["v1_sha"] and e.strategy == "task-sets"
        found = aws("ecr").describe_images(repositoryName=cfg.ecr.repository, imageIds=[{"imageTag": e.commit}])
        assert e.digest == found["imageDetails"][0]["imageDigest"] and e.image and e.image.endswith(f"@{e.digest}")
        svc = aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
        primary = next(ts for ts in svc["taskSets"] if ts["status"] == "PRIMARY")
        assert e.task_definition == primary["taskDefinition"] and str(e.task_definition).rsplit(":", 1)[-1].isdigit()
    store = ManifestStore.from_clients(fleet["clients"])
    assert store.by_run("fleet-v1") == m1
    assert (Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "manifests" / m1.file_name()).is_file()
    # a single release's own manifest, under the service's key; both are table artifacts
    one = fleet["configs"][0]
    assert record_release_manifest(one, fleet["clients"], "release-v1") is not None
    with get_client(sync_client=True) as client:
        for key in (FLEET_KEY, f"{one.name}-manifest"):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
            assert found and found[0].type == "table", key


def test_a_digest_gone_from_ecr_is_refused_before_anything_moves(
    fleet: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m1: Manifest = fleet["v1"]
    gone = m1.services[1]
    broken = m1.model_copy(update={"services": [
        e if e is not gone else e.model_copy(update={"digest": DIGEST_B, "image": f"x@{DIGEST_B}"})
        for e in m1.services]})
    repo = fleet["configs"][1].ecr.repository
    with pytest.raises(ConfigError) as refused:
        restore_plan(broken, fleet["configs"], fleet["clients"])
    assert f"{gone.service}: image {DIGEST_B} is no longer in ECR repository {repo}" in str(refused.value)
    path = tmp_path / "broken.json"
    path.write_text(broken.model_dump_json())
    position = request_log_position()
    with deployments(fleet["folder"]):
        assert main(["deploy", "--manifest", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nothing was changed" in err and gone.service in err and DIGEST_B in err and repo in err, err
    assert mutating_calls_since(position) == []


def test_a_service_changed_by_hand_shows_as_drifted(fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fleet["configs"][0]
    ecs = aws("ecs")
    svc = ecs.describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
    primary = next(ts for ts in svc["taskSets"] if ts["status"] == "PRIMARY")
    td = ecs.describe_task_definition(taskDefinition=primary["taskDefinition"])["taskDefinition"]
    kept = ("family", "containerDefinitions", "networkMode", "requiresCompatibilities", "cpu", "memory",
            "executionRoleArn", "taskRoleArn")
    td["containerDefinitions"][0].setdefault("environment", []).append({"name": "BY_HAND", "value": "1"})
    by_hand = ecs.register_task_definition(**{k: td[k] for k in kept if td.get(k)})["taskDefinition"]
    made = ecs.create_task_set(cluster=cfg.ecs.cluster, service=cfg.ecs.service,
                               taskDefinition=by_hand["taskDefinitionArn"], loadBalancers=primary["loadBalancers"],
                               networkConfiguration=primary["networkConfiguration"],
                               scale={"value": 0, "unit": "PERCENT"})["taskSet"]
    ecs.update_service_primary_task_set(cluster=cfg.ecs.cluster, service=cfg.ecs.service,
                                        primaryTaskSet=made["taskSetArn"])
    with deployments(fleet["folder"]):
        assert main(["status", "--json"]) == 0
    rows = {r["service"]: r for r in json.loads(capsys.readouterr().out)["services"]}
    drift, newest = rows[cfg.name]["drift"], rows[cfg.name]["manifest_drift"]
    was = fleet["v1"].services[0].task_definition.rsplit("/", 1)[-1]
    now = by_hand["taskDefinitionArn"].rsplit("/", 1)[-1]
    assert drift["drifted"] and newest["drifted"], rows[cfg.name]
    # the newest manifest naming it: its own release's (written after the fleet's)
    assert newest["run_id"] == "release-v1", drift
    assert newest["detail"].startswith(f"differs from manifest of run release-v1 at {newest['created_at']}: "
                                       f"live {now}, manifest {was}"), drift
    assert newest["detail"] in drift["detail"]
    for other in fleet["configs"][1:]:
        assert rows[other.name]["manifest_drift"]["drifted"] is False, rows[other.name]


def test_deploy_manifest_puts_a_fleet_of_3_back(fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Every service back on the manifest's digest and its very task definition revision, not a copy."""
    commit(fleet["repo"], "v2")
    with deployments(fleet["folder"]):
        assert release_fleet(max_parallel=3, return_state=True).is_completed()
        moved = record_fleet_manifest(fleet["configs"], fleet["clients"], "fleet-v2")
        assert moved is not None and all(e.commit != fleet["v1_sha"] for e in moved.services)
        assert main(["deploy", "--manifest", "fleet-v1"]) == 0
    out = capsys.readouterr().out
    assert "every listed service serves the manifest of run fleet-v1" in out, out
    assert "3 service(s) to put back, 0 already on it" in out, out
    for e in fleet["v1"].services:
        cfg = next(c for c in fleet["configs"] if c.name == e.service)
        svc = aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
        primary = next(ts for ts in svc["taskSets"] if ts["status"] == "PRIMARY")
        image = aws("ecs").describe_task_definition(taskDefinition=primary["taskDefinition"])["taskDefinition"][
            "containerDefinitions"][0]["image"]
        assert image.endswith(f"@{e.digest}"), (e.service, image)
        assert primary["taskDefinition"] == e.task_definition, (e.service, primary["taskDefinition"])  # exactly it
    assert "differs from manifest" not in out, out
