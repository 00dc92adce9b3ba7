"""CodePipeline interop: its hand-over files, its templates unchanged, and one YAML field per strategy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.operations import diff_service
from harness.services import ROOT, aws, make_service
from tasks.aws.clients import AwsClients
from tasks.build.codepipeline_files import (
    IMAGE_DEFINITIONS,
    IMAGE_DETAIL,
    hand_over_live,
    image_definitions,
    image_detail,
    write_interop_files,
)
from tasks.config.appspec import render_appspec
from tasks.config.models import load_service, parse_service
from tasks.config.taskdef import load_template, render_task_definition
from tasks.core.settings import Settings
from tasks.release.stages import render

SAMPLE = ROOT / "deployments" / "sample-app"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app@sha256:" + "b" * 64
ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/sample-app:3"


def test_files_are_in_codepipelines_formats() -> None:
    # The shapes of the CodePipeline user guide's examples, byte for byte once serialised.
    assert json.dumps(image_definitions("web", IMAGE)) == f'[{{"name": "web", "imageUri": "{IMAGE}"}}]'
    assert json.dumps(image_detail(IMAGE)) == f'{{"ImageURI": "{IMAGE}"}}'


def test_a_repos_taskdef_and_appspec_render_as_codepipeline_fills_them() -> None:
    """CodePipeline substitutes text: <IMAGE1_NAME> from imageDetail.json, <TASK_DEFINITION> with the ARN."""
    taskdef_text = (SAMPLE / "taskdef.json").read_text()
    theirs = json.loads(taskdef_text.replace("<IMAGE1_NAME>", image_detail(IMAGE)["ImageURI"]))
    ours = render_task_definition(load_template(SAMPLE / "taskdef.json"), image=IMAGE, container="web")
    assert ours == theirs
    appspec_text = (SAMPLE / "appspec.yml").read_text()
    assert render_appspec(appspec_text, ARN, "web", 8080) == yaml.safe_load(
        appspec_text.replace("<TASK_DEFINITION>", ARN)
    )


def read_artifact(key: str, flow_run_id: Any) -> str:
    """KEY's artifact written by that flow run (the demo writes the same keys: never just the latest)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            ),
            limit=1,
        )
    return str(found[0].data) if found else ""


def test_written_as_files_and_prefect_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "out"))
    cfg = load_service(ROOT / "deployments" / "sample-app.yaml")

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the artifacts folder would be")

    @flow(name="interop-files-check")
    def release_files() -> list[str]:
        written = write_interop_files(cfg, IMAGE, tmp_path / "out")
        hand_over_live(cfg, None, tmp_path / "out")  # nothing known to serve: the files stay as they are
        hand_over_live(cfg, IMAGE + "-other", blocked)  # a write that fails does not fail the release
        return written

    state = release_files(return_state=True)
    paths, run_id = state.result(), state.state_details.flow_run_id
    folder = tmp_path / "out" / "sample-app"
    assert paths == [str(folder / IMAGE_DEFINITIONS), str(folder / IMAGE_DETAIL)]
    assert json.loads((folder / IMAGE_DEFINITIONS).read_text()) == [{"name": "web", "imageUri": IMAGE}]
    assert json.loads((folder / IMAGE_DETAIL).read_text()) == {"ImageURI": IMAGE}
    assert sorted(p.name for p in folder.iterdir()) == [IMAGE_DETAIL, IMAGE_DEFINITIONS]
    handover = read_artifact("sample-app-handover", run_id)
    assert json.dumps([{"name": "web", "imageUri": IMAGE}]) in handover
    assert json.dumps({"ImageURI": IMAGE}) in handover


@pytest.mark.parametrize(
    "kind",
    [
        "task-sets",
        "codedeploy",
        "rolling",
    ],
)
def test_the_demo_service_switches_strategy_by_one_field(kind: str) -> None:
    path = ROOT / "deployments" / "sample-app.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["strategy"]["type"] = kind
    if kind == "rolling":
        data["strategy"].pop("traffic")  # rolling does not shift traffic: the field is refused
    cfg = parse_service(data, source=str(path), base_dir=path.parent)
    assert cfg.strategy.type == kind
    assert cfg.model_dump(exclude={"strategy"}) == load_service(path).model_dump(exclude={"strategy"})


def test_live_task_definition_diffs_empty_against_its_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What AWS fills in (revision, status, cpu 0, empty lists, hostPort...) is no difference."""
    sut = make_service(tmp_path, strategy="rolling")
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
    cfg = sut.cfg
    image = str(sut.seeded["image"])
    desired = render(cfg, image, "c" * 40, AwsClients(Settings()))  # as a release renders it
    ecs = aws("ecs")
    arn = ecs.register_task_definition(**desired)["taskDefinition"]["taskDefinitionArn"]
    live = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])["taskDefinition"]
    assert {"revision", "status", "taskDefinitionArn"} <= set(live), "AWS filled in its fields"
    ecs.update_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, taskDefinition=arn)
    assert diff_service(sut.name, None) == []
    assert diff_service(sut.name, image + "-other") == [
        f'~ containerDefinitions[web].image: "{image}" -> "{image}-other"'
    ]
