"""Buildspecs run for real: a shell on this host, SSM and Secrets Manager in the sandbox, Prefect artifacts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from harness.services import aws
from tasks.aws.clients import AwsClients
from tasks.build.buildspec_runner import BuildRun, run_buildspec
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import ServiceConfig, parse_service
from tasks.core.errors import BuildError
from tasks.core.settings import Settings

SHA = "a" * 40


@pytest.fixture
def cfg(tmp_path: Path) -> ServiceConfig:
    name = "b" + uuid.uuid4().hex[:8]
    return parse_service(
        {"name": name, "source": {"repo": "https://user:pw@git.example.com/org/app"}, "ecr": {"repository": name},
         "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
         "task_definition": "taskdef.json", "strategy": {"type": "rolling"}, "build": {"timeout_seconds": 60}},
        source="test.yaml", base_dir=tmp_path,
    )


class Run:
    def __init__(self, cfg: ServiceConfig, src: Path) -> None:
        self.cfg, self.src, self.lines = cfg, src, []  # type: list[str]
        self.debug: list[str] = []
        self.clients = AwsClients(Settings(artifacts_dir=src.parent / "artifacts"))

    def __call__(self, data: dict[str, Any]) -> BuildRun:
        spec = parse_buildspec({"version": 0.2, **data}, "buildspec.yml")

        @flow(name="buildspec-test", persist_result=False)
        def in_flow() -> BuildRun:
            """Artifacts belong to a run, as in the pipeline (no parameters: nothing to serialise)."""
            return run_buildspec(self.cfg, self.clients, spec, SHA, self.src, "127.0.0.1:1/repo", self.lines.append,
                                 self.debug.append)

        return in_flow()

    def failed(self, data: dict[str, Any]) -> str:
        with pytest.raises(BuildError) as err:
            self(data)
        return err.value.message

    def output(self) -> list[str]:
        return [line for line in self.lines if not line.startswith("[")]


@pytest.fixture
def run(cfg: ServiceConfig, tmp_path: Path) -> Run:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    return Run(cfg, src)


def test_phases_run_in_order_in_one_shell(run: Run) -> None:
    done = run({
        "env": {"variables": {"GREETING": "hi"}, "exported-variables": ["IMAGE_TAG", "COUNT"]},
        "phases": {
            "post_build": {"commands": ['echo "post $COUNT $(basename "$PWD")"']},
            "install": {"commands": ["cd sub", "COUNT=1"]},
            "pre_build": {"commands": ["COUNT=$((COUNT + 1)); export IMAGE_TAG=$(echo $CODEBUILD_SOURCE_VERSION "
                                       "| cut -c 1-7)", 'printf "no newline %s" "$GREETING"']},
            "build": {"commands": ['echo "build $COUNT $(basename "$PWD") $IMAGE_TAG"', "read x; echo read=$?"]},
        },
    })
    assert run.output() == ["no newline hi", "build 2 sub aaaaaaa", "read=1", "post 2 sub"]
    assert done.phases == [(p, "SUCCEEDED") for p in ("install", "pre_build", "build", "post_build")]
    assert done.exported == {"IMAGE_TAG": "aaaaaaa", "COUNT": "2"}
    assert "exported IMAGE_TAG=aaaaaaa" in done.notes()


def test_codebuild_variables_are_set(run: Run, cfg: ServiceConfig) -> None:
    names = ("CODEBUILD_RESOLVED_SOURCE_VERSION", "CODEBUILD_SOURCE_VERSION", "CODEBUILD_SRC_DIR",
             "CODEBUILD_BUILD_NUMBER", "CODEBUILD_BUILD_ID", "CODEBUILD_BUILD_ARN", "AWS_REGION",
             "AWS_DEFAULT_REGION", "CODEBUILD_SOURCE_REPO_URL", "CODEBUILD_BUILD_SUCCEEDING", "REPOSITORY_URI")
    first = run({"env": {"exported-variables": list(names)}, "phases": {"build": {"commands": ["true"]}}})
    second = run({"env": {"exported-variables": list(names)}, "phases": {"build": {"commands": ["true"]}}})
    env = first.exported
    assert env["CODEBUILD_RESOLVED_SOURCE_VERSION"] == env["CODEBUILD_SOURCE_VERSION"] == SHA
    assert env["CODEBUILD_SRC_DIR"] == "/codebuild/output/src", "the checkout's copy, where the box mounts it"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == run.clients.settings.region
    assert env["CODEBUILD_BUILD_ID"].startswith(f"{cfg.name}:")
    assert env["CODEBUILD_BUILD_ARN"].startswith("arn:aws:codebuild:")
    assert env["CODEBUILD_SOURCE_REPO_URL"] == "https://***@git.example.com/org/app"
    assert env["CODEBUILD_BUILD_SUCCEEDING"] == "1" and env["REPOSITORY_URI"] == "127.0.0.1:1/repo"
    assert int(second.exported["CODEBUILD_BUILD_NUMBER"]) == int(env["CODEBUILD_BUILD_NUMBER"]) + 1


def test_failed_pre_build_ends_the_build(run: Run) -> None:
    message = run.failed({"phases": {
        "pre_build": {"commands": ["echo testing", "echo 'FAIL test_root' >&2; exit 3", "echo never"]},
        "build": {"commands": ["echo building"]},
    }})
    assert message.startswith("buildspec failed in phase pre_build: command `echo 'FAIL test_root' >&2; exit 3` "
                              "exited 3; last output:\n  | FAIL test_root")
    assert "building" not in run.lines and "never" not in run.lines


def test_docker_progress_goes_to_debug_with_one_line_at_info(run: Run) -> None:
    fake_docker = 'docker() { echo "Step 1/2 : FROM scratch"; echo " ---> Using cache"; echo "done: $1"; }'
    run({"phases": {"build": {"commands": [
        fake_docker, "docker build -t repo:abc .", 'echo "tests passed"', "cd . && docker push repo:abc",
    ]}}})
    progress = ["Step 1/2 : FROM scratch", " ---> Using cache"]
    assert run.debug == [*progress, "done: build", *progress, "done: push"]
    assert "[build] done: build (3 lines of docker output at DEBUG)" in run.lines
    assert "[build] done: push (3 lines of docker output at DEBUG)" in run.lines
    assert "tests passed" in run.output() and not any("Step 1/2" in line for line in run.output())


def test_failed_build_still_runs_post_build_as_codebuild_does(run: Run) -> None:
    message = run.failed({"phases": {
        "build": {"commands": ["false"]},
        "post_build": {"commands": ['echo "succeeding=$CODEBUILD_BUILD_SUCCEEDING"']},
    }})
    assert "phase build: command `false` exited 1" in message
    assert "succeeding=0" in run.lines


def test_on_failure_abort_and_continue(run: Run) -> None:
    run.failed({"phases": {"build": {"on-failure": "ABORT", "commands": ["false"]},
                           "post_build": {"commands": ["echo post"]}}})
    assert "post" not in run.lines
    message = run.failed({"phases": {"pre_build": {"on-failure": "CONTINUE", "commands": ["false"]},
                                     "build": {"commands": ["echo build ran"]}}})
    assert "build ran" in run.lines, "CONTINUE goes on to the next phase"
    assert "phase pre_build" in message, "and the build still fails"


def test_finally_runs_after_a_failed_command_and_can_fail_the_phase(run: Run) -> None:
    message = run.failed({"phases": {"build": {
        "commands": ["echo one", "false", "echo skipped"], "finally": ["echo cleanup", "echo done"]}}})
    assert run.output() == ["one", "cleanup", "done"]
    assert "command `false`" in message
    run.lines.clear()
    message = run.failed({"phases": {"build": {"commands": ["echo ok"], "finally": ["exit 4", "echo after"]}}})
    assert "command `exit 4` exited 4" in message
    assert run.output() == ["ok", "after"], "a command that exits the shell fails; the rest get a new shell"


def test_syntax_error_fails_the_command_not_the_session(run: Run) -> None:
    message = run.failed({"phases": {"build": {"commands": ["X=kept", "if then"], "finally": ['echo "x=$X"']}}})
    assert "command `if then` exited 2" in message
    assert "x=kept" in run.lines


def test_env_from_parameter_store_and_secrets_manager_is_masked(run: Run, cfg: ServiceConfig) -> None:
    secret, param = "s3cr3t-" + uuid.uuid4().hex, "p4r4m-" + uuid.uuid4().hex
    aws("ssm").put_parameter(Name=f"/{cfg.name}/db", Value=param, Type="SecureString")
    aws("secretsmanager").create_secret(Name=f"{cfg.name}/api", SecretString=f'{{"token": "{secret}"}}')
    spec = {
        "env": {"parameter-store": {"DB": f"/{cfg.name}/db"}, "secrets-manager": {"TOKEN": f"{cfg.name}/api:token"},
                "variables": {"PLAIN": "visible"}, "exported-variables": ["DB", "PLAIN"]},
        "phases": {"build": {"commands": [
            f'test "$TOKEN" = {secret} && test "$DB" = {param}',
            'echo "token=$TOKEN db=$DB plain=$PLAIN"', 'env | grep -c "^TOKEN=" ', "echo $TOKEN >&2; exit 1"]}},
        "reports": {"unit": {"files": ["report.xml"]}},
    }
    (run.src / "report.xml").write_text(
        f'<testsuite name="t"><testcase name="leak"><failure message="got {secret}"/></testcase></testsuite>')
    message = run.failed(spec)
    assert "token=*** db=*** plain=visible" in run.lines
    assert secret not in message and param not in message and "  | ***" in message
    assert all(secret not in line and param not in line for line in run.lines)
    table = artifact_text(f"{cfg.name}-tests-unit")
    assert secret not in table and "got ***" in table
    done = run({**spec, "phases": {"build": {"commands": ["true"]}}})
    assert done.exported == {"DB": "***", "PLAIN": "visible"}


def test_a_missing_parameter_is_named(run: Run, cfg: ServiceConfig) -> None:
    with pytest.raises(BuildError, match=f"env.parameter-store.DB: parameter /{cfg.name}/none not found"):
        run({"env": {"parameter-store": {"DB": f"/{cfg.name}/none"}}, "phases": {"build": {"commands": ["true"]}}})


def test_junit_report_becomes_a_table_artifact(run: Run, cfg: ServiceConfig) -> None:
    cases = ('<testcase classname="app" name="test_ok" time="0.25"/>'
             '<testcase classname="app" name="test_root"><failure message="GET / answered 500"/></testcase>')
    message = run.failed({
        "phases": {"pre_build": {"commands": [
            "mkdir -p out/unit", f"printf '<testsuites><testsuite name=\"app\">{cases}</testsuite></testsuites>' "
            "> out/unit/junit.xml", "false"]}},
        "reports": {"unit tests": {"files": ["**/*.xml"], "base-directory": "out"}},
    })
    key = f"{cfg.name}-tests-unit"  # one key: the group's words less the word "tests"
    assert message.startswith(f"1 of 2 tests failed: app.test_root (GET / answered 500); test report: artifact {key}\n"
                              "buildspec failed in phase pre_build"), "the failing test leads the reason"
    table = artifact_text(key)
    assert table.startswith(f"{cfg.name} tests (unit tests): 1 of 2 tests failed: app.test_root (GET / answered 500); "
                            "1 passed, 1 failed, 0 skipped "), "the description leads with the failing test too"
    assert table.index("app.test_root") < table.index("app.test_ok")
    assert "GET / answered 500" in table and '"failed"' in table and '"passed"' in table
    assert '"0.250 s"' in table and '"time not reported"' in table, "times as the JUnit file gives them"


def test_artifacts_files_are_collected(run: Run, cfg: ServiceConfig) -> None:
    done = run({"phases": {"build": {"commands": ["mkdir -p dist/a", "echo x > dist/a/app.txt",
                                                  "echo y > dist/skip.log"]}},
                "artifacts": {"files": ["**/*"], "base-directory": "dist", "exclude-paths": ["*.log"]}})
    assert [p.relative_to(run.src.parent / "artifacts" / cfg.name / "build").as_posix() for p in done.artifacts] \
        == ["a/app.txt"]


def test_a_failed_build_still_uploads_its_artifacts_and_reports_as_codebuild_does(run: Run, cfg: ServiceConfig) -> None:
    (run.src / "junit.xml").write_text('<testsuite name="app"><testcase name="test_root">'
                                       '<failure message="GET / answered 500"/></testcase></testsuite>')
    data = {"phases": {"build": {"commands": [
        "mkdir -p logs", "echo trace > logs/build.log", """printf '[{"name":"web","imageUri":"x:1"}]' > i.json""",
        "false"]}}, "artifacts": {"files": ["logs/*", "i.json"]}, "reports": {"unit": {"files": ["junit.xml"]}}}
    message = run.failed(data)
    out = run.src.parent / "artifacts" / cfg.name / "build"
    assert "phase build: command `false` exited 1" in message
    assert (out / "logs" / "build.log").read_text() == "trace\n"
    assert f"artifacts of the failed build (no hand-over): {out}" in run.lines
    assert message.endswith(f"\nartifacts of the failed build (no hand-over): {out}"), "the summary says where"
    assert "GET / answered 500" in artifact_text(f"{cfg.name}-tests-unit")

    message = run.failed({**data, "phases": {"pre_build": {"commands": ["echo newer > logs/build.log", "false"]},
                                             "build": {"commands": ["true"]}}})
    assert (out / "logs" / "build.log").read_text() == "trace\n", "a failed pre_build uploads nothing"
    assert "artifacts of the failed build" not in message


def artifact_text(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return "\n".join(f"{a.description} {a.data}" for a in found)
