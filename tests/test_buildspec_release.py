"""build.buildspec in a real release: failing tests stop it before anything is pushed; a buildspec that
pushes its own image hands it over by imagedefinitions.json; a rerun skips the finished build."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.pipeline import deploy_service
from harness.browser import in_first_viewport, ui_page, ui_url
from harness.services import HTTP, ServiceUnderTest, aws, refuse_next_call
from tasks.release.outcome import outcome_of


def with_buildspec(sut: ServiceUnderTest, buildspec: Any) -> None:
    config = yaml.safe_load(sut.yaml_path.read_text())
    config["build"] = {"buildspec": buildspec}
    sut.yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))


def request_log(since: int) -> dict[str, Any]:
    answer = HTTP.get(f"{os.environ['AWS_ENDPOINT_URL']}/_sandbox/requests", params={"since": since}, timeout=10)
    answer.raise_for_status()
    return dict(answer.json())


def image_tags(repository: str) -> list[str]:
    images = aws("ecr").list_images(repositoryName=repository)["imageIds"]
    return sorted(i.get("imageTag", "") for i in images)


def artifacts(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return "\n".join(f"{a.description} {a.data}" for a in found)


def test_failing_tests_stop_the_release_before_any_push(
    new_service: Callable[..., ServiceUnderTest], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefect")  # the tests ship only warnings to the server
    sut = new_service(strategy="rolling")
    secret = "hunter2-" + uuid.uuid4().hex
    aws("secretsmanager").create_secret(Name=f"{sut.name}/token", SecretString=secret)
    with_buildspec(sut, {
        "version": 0.2,
        "env": {"secrets-manager": {"TOKEN": f"{sut.name}/token"}},
        "phases": {
            "pre_build": {"commands": ['echo "testing with $TOKEN"', "sh tests/run.sh reports/junit.xml"]},
            "build": {"commands": ['docker build -t "$REPOSITORY_URI:never" .']},
            "post_build": {"commands": ['docker push "$REPOSITORY_URI:never"']},
        },
        "reports": {"unit": {"files": ["junit.xml"], "base-directory": "reports"}},
    })
    sha = sut.commit("v2", broken="root")
    tags, revisions = image_tags(sut.name), sut.revisions()
    since = int(request_log(0)["last"])

    state = deploy_service(sut.name, sha=sha, return_state=True)

    assert state.is_failed()
    message = state.message or ""
    failing = "1 of 5 tests failed: sample-app.root_answers_200 (GET / answers 500 Internal Server Error)"
    assert message.splitlines()[0].endswith(f": {failing}; test report: artifact {sut.name}-tests-unit"), message
    assert "buildspec failed in phase pre_build: command `sh tests/run.sh reports/junit.xml` exited 1" in message
    assert "FAIL root_answers_200: GET / answers 500 Internal Server Error" in message
    assert image_tags(sut.name) == tags, "no image pushed"
    assert sut.revisions() == revisions, "no task definition revision"
    mutating = [r for r in request_log(since)["requests"] if r["mutating"] and r["service"] in ("ecs", "ecr")]
    assert mutating == []
    report = artifacts(f"{sut.name}-tests-unit")
    assert report.startswith(f"{sut.name} tests (unit): {failing}; 4 passed, 1 failed"), report
    assert '"time not reported"' in report and "0.000" not in report, "the sample app's JUnit file has no times"
    summary = artifacts(f"{sut.name}-release")
    # The description (what lists show) and the table's Reason cell: the failing test, cut at a word.
    assert summary.startswith(f"{sut.name}@{sha[:7]}: Failed: {failing}; test report: artifact {sut.name}-tests-unit"
                              " … (full reason in the summary) "), summary
    assert f"| Reason | {failing} … (reason below) |" in summary
    assert "- buildspec failed in phase pre_build" in summary, "the whole reason below the table, a line each"
    with get_client(sync_client=True) as client:  # the run's summary page, in Chromium: the failing test first
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{sut.name}-release"])))
    page_id = next(a.id for a in found if a.flow_run_id == state.state_details.flow_run_id)
    with ui_page() as page:
        page.goto(f"{ui_url()}/artifacts/artifact/{page_id}", wait_until="networkidle", timeout=60_000)
        assert in_first_viewport(page, "root_answers_200"), "the failing test is shown without scrolling"
    lines = [record.getMessage() for record in caplog.records]
    assert "testing with ***" in lines
    assert all(secret not in text for text in [*lines, message, report, summary])


def test_buildspec_image_is_deployed_by_digest_and_a_rerun_skips_the_build(
    new_service: Callable[..., ServiceUnderTest],
) -> None:
    sut = new_service(strategy="rolling")
    with_buildspec(sut, "buildspec.yml")  # the sample app's own: it pushes and writes imagedefinitions.json
    sha = sut.commit("v2")
    refuse_next_call("RegisterTaskDefinition", "AccessDeniedException", match=sut.name)

    failed = deploy_service(sut.name, sha=sha, return_state=True)

    assert failed.is_failed() and "AccessDeniedException" in (failed.message or "")
    ecr = aws("ecr")
    pushed = ecr.describe_images(repositoryName=sut.name, imageIds=[{"imageTag": sha[:7]}])["imageDetails"][0]
    assert sorted(pushed["imageTags"]) == sorted([sha[:7], sha]), "the pipeline tagged it with the full SHA"
    summary = artifacts(f"{sut.name}-release")
    assert f"exported IMAGE_TAG={sha[:7]}" in summary, "exported variables are in the release summary"
    assert "5 passed, 0 failed" in artifacts(f"{sut.name}-tests-sample-app"), "group sample-app-tests: tests once"

    rerun = deploy_service(sut.name, sha=sha, return_state=True)

    assert outcome_of(rerun) == "Deployed", rerun.message
    result = rerun.result()
    assert result["done"] == ["register"], "the build (and its buildspec) and the push were found done"
    family = sut.revisions()[-1]
    container = aws("ecs").describe_task_definition(taskDefinition=family)["taskDefinition"]["containerDefinitions"][0]
    uri = ecr.describe_repositories(repositoryNames=[sut.name])["repositories"][0]["repositoryUri"]
    assert container["image"] == f"{uri}@{pushed['imageDigest']}"
    assert "v2" in sut.get("/").text
