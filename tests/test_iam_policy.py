"""The IAM policies `ecs-pipeline iam` prints: stored documents, and each strategy's actions as its code calls them.

Pure: no sandbox call. The actions a strategy "really calls" are found by walking the
code itself (tasks/ and flows/) from the release skeleton and the strategy's steps:
every boto3 client method named like a botocore operation of the services the
pipeline uses, and every paginator, becomes its IAM action (ecs:CreateTaskSet, ...).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

from tasks.config.buildspec import BuildSpec, load_buildspec
from tasks.config.models import ServiceConfig, load_service, parse_service
from tasks.config.taskdef import load_template, render_task_definition
from tasks.release.permissions import REGISTRY_PUSH, UNSCOPED, Policy, Scope, build_policy, deploy_policy, merge

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "iam"
DEPLOYMENTS = ROOT / "deployments"
SCOPE = Scope("123456789012", "eu-west-1")
REGENERATE = "ECS_PIPELINE_REGENERATE_IAM"
SAMPLES = ("sample-app", "sample-app-cd", "sample-app-native")
# Granted for what the code's calls imply, not called through boto3: PassRole (RegisterTaskDefinition naming
# roles), TagResource (its tags on create), docker push's registry calls with the pipeline's ECR token.
IMPLIED = {"iam:PassRole", "ecs:TagResource", *REGISTRY_PUSH}


def sample(name: str) -> ServiceConfig:
    return load_service(DEPLOYMENTS / f"{name}.yaml")


def sample_buildspec(cfg: ServiceConfig) -> BuildSpec | None:
    """sample-app's buildspec lives in its repository (examples/sample-app); the others have none."""
    if cfg.build.buildspec is None:
        return None
    path = ROOT / "examples" / "sample-app" / str(cfg.build.buildspec)
    return load_buildspec(path.read_text(), str(path))


def rendered(cfg: ServiceConfig) -> dict[str, Any]:
    path = cfg.path(cfg.task_definition)
    return render_task_definition(load_template(path), image="<IMAGE>", container=cfg.ecs.container, sha=None,
                                  service=cfg.name, source=str(path), account=None, region=None)


def policies(cfg: ServiceConfig) -> dict[str, Policy]:
    spec = sample_buildspec(cfg)
    return {"deploy": deploy_policy(cfg, rendered(cfg), spec, SCOPE), "build": build_policy(cfg, spec, SCOPE)}


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("role", ["deploy", "build"])
def test_the_sample_apps_policies_are_the_stored_ones(name: str, role: str) -> None:
    got = policies(sample(name))[role].document
    path = FIXTURES / f"{name}-{role}.json"
    if os.environ.get(REGENERATE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert path.is_file(), f"no stored policy {path}; write it with {REGENERATE}=1 pytest {__file__}"
    want = json.loads(path.read_text())
    assert got == want, (
        f"the {role} policy for {name} differs from {path.relative_to(ROOT)}. If the change is deliberate "
        f"(the code calls other actions now), regenerate with `{REGENERATE}=1 pytest tests/test_iam_policy.py` "
        f"and review the diff.\n{json.dumps(got, indent=2)}"
    )


def test_a_fleet_merges_into_one_policy_per_role() -> None:
    deploy = merge([policies(sample(name))["deploy"] for name in SAMPLES])
    sids = [s["Sid"] for s in deploy.document["Statement"]]
    assert len(sids) == len(set(sids)), sids
    described = next(s for s in deploy.document["Statement"] if s["Sid"] == "ReadTheService")
    assert described["Resource"] == [f"arn:aws:ecs:eu-west-1:123456789012:service/demo/{n}" for n in SAMPLES]
    assert {"ecs:CreateTaskSet", "codedeploy:CreateDeployment", "ecs:ContinueServiceDeployment"} <= deploy.actions()


# --- what each strategy's code path calls -----------------------------------------------------------------

BOTO_SERVICES = {"ecs": "ecs", "ecr": "ecr", "elbv2": "elasticloadbalancing", "codedeploy": "codedeploy",
                 "cloudwatch": "cloudwatch", "sts": "sts", "ssm": "ssm", "secretsmanager": "secretsmanager",
                 "iam": "iam"}
Node = tuple[str, str]  # (module, "function" | "Class" | "Class.method")


class CodeWalk:
    """Functions reachable from entry points (calls, callbacks, self.methods, module.function), and the
    AWS operations they call on clients; a class counts where it is constructed."""

    def __init__(self) -> None:
        session = botocore.session.get_session()
        self.ops: dict[str, set[str]] = {}
        for svc, prefix in BOTO_SERVICES.items():
            for op in session.get_service_model(svc).operation_names:
                self.ops.setdefault(xform_name(op), set()).add(f"{prefix}:{op}")
        self.modules: dict[str, tuple[dict[str, ast.AST], dict[str, tuple[str, str | None]]]] = {}

    def module(self, name: str) -> tuple[dict[str, ast.AST], dict[str, tuple[str, str | None]]] | None:
        if name not in self.modules:
            path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
            if not path.is_file():
                return None
            tree = ast.parse(path.read_text())
            defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            imports: dict[str, tuple[str, str | None]] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    for a in node.names:
                        sub = f"{node.module}.{a.name}"
                        is_mod = ROOT.joinpath(*sub.split(".")).with_suffix(".py").is_file()
                        imports[a.asname or a.name] = (sub, None) if is_mod else (node.module, a.name)
            self.modules[name] = (defs, imports)
        return self.modules[name]

    def resolve(self, mod: str, name: str) -> Node | None:
        found = self.module(mod)
        if found is None:
            return None
        defs, imports = found
        if name in defs:
            return (mod, name)
        target, member = imports.get(name, ("", None))
        return self.resolve(target, member) if member and target.startswith(("tasks", "flows")) else None

    def alias(self, mod: str, name: str) -> str | None:
        found = self.module(mod)
        target, member = found[1].get(name, ("", "-")) if found else ("", "-")
        return target if member is None and target.startswith(("tasks", "flows")) else None

    def method(self, mod: str, cls: str, meth: str) -> Node | None:
        found = self.module(mod)
        node = found[0].get(cls) if found else None
        if not isinstance(node, ast.ClassDef):
            return None
        if any(isinstance(i, ast.FunctionDef) and i.name == meth for i in node.body):
            return (mod, f"{cls}.{meth}")
        for base in node.bases:
            where = self.resolve(mod, base.id) if isinstance(base, ast.Name) else None
            hit = self.method(where[0], where[1], meth) if where else None
            if hit:
                return hit
        return None

    def inherited(self, mod: str, cls: str, meth: str) -> Node | None:
        """super().METH inside CLS: the first base class that has it."""
        found = self.module(mod)
        node = found[0].get(cls) if found else None
        for base in node.bases if isinstance(node, ast.ClassDef) else []:
            where = self.resolve(mod, base.id) if isinstance(base, ast.Name) else None
            hit = self.method(where[0], where[1], meth) if where else None
            if hit:
                return hit
        return None

    def body(self, node: Node) -> ast.AST:
        found = self.module(node[0])
        assert found is not None, node
        cls, _, meth = node[1].partition(".")
        item = found[0][cls]
        if meth:
            assert isinstance(item, ast.ClassDef)
            return next(i for i in item.body if isinstance(i, ast.FunctionDef) and i.name == meth)
        return item

    def edges(self, node: Node) -> tuple[set[Node], dict[str, Node]]:
        mod, (cls, _, meth) = node[0], node[1].partition(".")
        item = self.body(node)
        if isinstance(item, ast.ClassDef):
            return {m for m in (self.method(mod, cls, "__init__"),) if m}, {}
        called = {id(c.func) for c in ast.walk(item) if isinstance(c, ast.Call)}
        out: set[Node] = set()
        calls: dict[str, Node] = {}
        for sub in ast.walk(item):
            target: Node | None = None
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                target = self.resolve(mod, sub.id)
                if target and "." not in target[1] and isinstance(self.body(target), ast.ClassDef) \
                        and id(sub) not in called:
                    target = None  # isinstance(x, Class) constructs nothing
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                other = self.alias(mod, sub.value.id)
                target = (self.resolve(other, sub.attr) if other
                          else self.method(mod, cls, sub.attr) if sub.value.id == "self" and meth else None)
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Call) and meth \
                    and isinstance(sub.value.func, ast.Name) and sub.value.func.id == "super":
                target = self.inherited(mod, cls, sub.attr)
            if target:
                out.add(target)
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                recv = sub.func.value
                if isinstance(recv, ast.Name) and (recv.id == "self" or self.alias(mod, recv.id)
                                                   or self.resolve(mod, recv.id)):
                    continue
                names = [sub.func.attr]
                if sub.func.attr == "get_paginator":
                    names = [a.value for a in sub.args[:1] if isinstance(a, ast.Constant)]
                assert sub.func.attr != "get_waiter", f"{node}: a waiter; map the operation it polls"
                for name in names:
                    for action in self.ops.get(name, ()):
                        calls[action] = node
        return out, calls

    def actions(self, entries: list[Node]) -> dict[str, set[Node]]:
        seen: set[Node] = set()
        todo = list(entries)
        found: dict[str, set[Node]] = {}
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                more, calls = self.edges(node)
                todo += more
                for action, where in calls.items():
                    found.setdefault(action, set()).add(where)
        return found


STEPS = {"task-sets": ("tasks.strategies.task_sets", "TaskSetSteps"),
         "codedeploy": ("tasks.strategies.codedeploy", "CodeDeploySteps"),
         "rolling": ("tasks.strategies.rolling", "RollingSteps"),
         "ecs-native": ("tasks.strategies.ecs_native", "EcsNativeSteps")}
RELEASE = [("tasks.release.skeleton", "release"), ("tasks.release.skeleton", "roll_back_in_flight"),
           ("tasks.strategies.choose", "choose_strategy")]


def called_by(strategy: str, walk: CodeWalk) -> dict[str, set[Node]]:
    mod, cls = STEPS[strategy]
    item = walk.body((mod, cls))
    assert isinstance(item, ast.ClassDef)
    steps = [(mod, f"{cls}.{m.name}") for m in item.body if isinstance(m, ast.FunctionDef)]
    return walk.actions(RELEASE + steps)


def expected_actions(cfg: ServiceConfig, called: dict[str, set[Node]]) -> set[str]:
    """The code path's actions, less those a condition of this config or service rules out, each said why."""
    out = set(called)
    native_only = {("tasks.aws.ecs", "native_serving_task_definition")}
    if cfg.strategy.type != "ecs-native":  # live_task_definition reads them only for an ECS blue/green service
        out -= {a for a, where in called.items() if where <= native_only}
    if cfg.build.buildspec is None:  # pushed_image.adopt_image and standard_env run only with a buildspec
        out -= {a for a, where in called.items() if where <= {("tasks.aws.ecr", "tag_image")}}
    out -= {"ssm:GetParameter", "secretsmanager:GetSecretValue"}  # the samples' buildspec names none
    if not cfg.build.role_arn:
        out.discard("sts:AssumeRole")
    if not cfg.verify.alarms:
        out.discard("cloudwatch:DescribeAlarms")
    if not cfg.deploy_role_arn:  # the preflight's own call: granted on a known principal only
        out.discard("iam:SimulatePrincipalPolicy")
    migration_only = {("tasks.aws.ecs", f) for f in ("run_one_off_task", "describe_one_task", "stop_one_task",
                                                     "one_off_tasks", "read_log_events")}
    if cfg.migrate is None:  # tasks/release/migration.py runs a task only for a service with migrate:
        out -= {a for a, where in called.items() if where <= migration_only}
    if cfg.analysis is None:  # tasks/aws/metrics.py reads the window only for a service with analysis:
        out -= {a for a, where in called.items() if where <= {("tasks.aws.metrics", "read_window")}}
    return out


def rolling_sample() -> ServiceConfig:
    data = yaml.safe_load((DEPLOYMENTS / "sample-app.yaml").read_text())
    data["strategy"] = {"type": "rolling"}
    return parse_service(data, source="sample-app.yaml (rolling)", base_dir=DEPLOYMENTS)


@pytest.fixture(scope="module")
def walk() -> CodeWalk:
    return CodeWalk()


@pytest.mark.parametrize("strategy", list(STEPS))
def test_the_deploy_policy_grants_exactly_what_the_strategy_calls(strategy: str, walk: CodeWalk) -> None:
    cfg = {"task-sets": sample("sample-app"), "codedeploy": sample("sample-app-cd"),
           "ecs-native": sample("sample-app-native"), "rolling": rolling_sample()}[strategy]
    assert cfg.strategy.type == strategy
    spec = sample_buildspec(cfg)
    granted = deploy_policy(cfg, rendered(cfg), spec, SCOPE).actions()
    want = expected_actions(cfg, called_by(strategy, walk))
    assert granted - IMPLIED == want - IMPLIED, (
        f"{strategy}: granted but not called: {sorted(granted - IMPLIED - want)}; "
        f"called but not granted: {sorted(want - IMPLIED - granted)}"
    )
    assert {"iam:PassRole", "ecs:TagResource", "ecr:InitiateLayerUpload"} <= granted


def test_each_strategy_has_its_own_actions_only(walk: CodeWalk) -> None:
    by = {s: deploy_policy(c, rendered(c), sample_buildspec(c), SCOPE).actions() for s, c in (
        ("task-sets", sample("sample-app")), ("codedeploy", sample("sample-app-cd")),
        ("ecs-native", sample("sample-app-native")), ("rolling", rolling_sample()))}
    assert "codedeploy:CreateDeployment" in by["codedeploy"]
    assert not any(a.startswith("codedeploy:") for s in ("task-sets", "rolling", "ecs-native") for a in by[s])
    assert "elasticloadbalancing:ModifyListener" in by["task-sets"]
    assert all("elasticloadbalancing:ModifyListener" not in by[s] for s in ("codedeploy", "rolling", "ecs-native"))
    assert "ecs:UpdateService" in by["rolling"] and "ecs:UpdateService" not in by["task-sets"]
    assert "ecs:CreateTaskSet" not in by["ecs-native"] | by["rolling"] | by["codedeploy"]


@pytest.mark.parametrize("name", SAMPLES)
def test_statements_are_explained_scoped_and_name_no_wildcard_action(name: str) -> None:
    for role, policy in policies(sample(name)).items():
        statements = policy.document["Statement"]
        sids = [s["Sid"] for s in statements]
        assert len(set(sids)) == len(sids) and all(sid.isalnum() for sid in sids), sids
        for s in statements:
            assert all("*" not in a for a in s["Action"]), s
            if s["Resource"] == "*" and "Condition" not in s and role == "deploy":
                assert set(s["Action"]) <= UNSCOPED, f"{s['Sid']}: AWS scopes these by resource: {s['Action']}"


def test_pass_role_names_only_the_task_definitions_roles_for_ecs_tasks() -> None:
    cfg = sample("sample-app")
    td = {**rendered(cfg), "taskRoleArn": "arn:aws:iam::<AWS_ACCOUNT_ID>:role/app/sample-app-task"}
    policy = deploy_policy(cfg, td, None, SCOPE)
    [passing] = [s for s in policy.document["Statement"] if "iam:PassRole" in s["Action"]]
    assert passing["Resource"] == ["arn:aws:iam::123456789012:role/app/sample-app-task",
                                   "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}

    native = sample("sample-app-native")
    native = native.model_copy(update={"strategy": native.strategy.model_copy(
        update={"infrastructure_role": "ecsInfrastructureRoleForLoadBalancers"})})
    statements = deploy_policy(native, rendered(native), None, Scope("*", "eu-west-1")).document["Statement"]
    roles = {s["Sid"]: (s["Resource"], s["Condition"]) for s in statements if "iam:PassRole" in s["Action"]}
    assert roles == {
        "PassTaskDefinitionRolesToEcsTasks": ("arn:aws:iam::*:role/ecsTaskExecutionRole",
                                              {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}),
        "PassInfrastructureRoleToEcs": ("arn:aws:iam::*:role/ecsInfrastructureRoleForLoadBalancers",
                                        {"StringEquals": {"iam:PassedToService": "ecs.amazonaws.com"}}),
    }


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ECS_PIPELINE_NO_SANDBOX": "1", "AWS_REGION": "eu-west-1",
           "ECS_PIPELINE_DEPLOYMENTS": str(DEPLOYMENTS)}
    return subprocess.run([sys.executable, "-m", "flows.cli", "iam", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_iam_deploy_prints_one_policy_document_and_notes_apart() -> None:
    done = cli("sample-app", "--role", "deploy", "--account", "123456789012")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert set(document) == {"Version", "Statement"}
    assert not [a for s in document["Statement"] for a in s["Action"] if "*" in a]
    assert document == json.loads((FIXTURES / "sample-app-deploy.json").read_text())
    assert "note: sample-app: load_balancer names listeners by load balancer and port" in done.stderr


def test_iam_all_and_cfn_and_errors() -> None:
    done = cli("--all", "--format", "cfn")
    assert done.returncode == 0, done.stderr
    resources = json.loads(done.stdout)["Resources"]
    assert {r["Type"] for r in resources.values()} == {"AWS::IAM::ManagedPolicy"} and len(resources) == 2
    missing = cli("no-such-app")
    assert missing.returncode == 2 and "no service named 'no-such-app'" in missing.stderr, missing.stderr
    assert missing.stdout == ""
    account = cli("sample-app", "--account", "12")
    assert account.returncode == 2 and "--account '12': an AWS account is 12 digits" in account.stderr


def test_the_permissions_page_shows_the_sample_apps_stored_policy() -> None:
    """docs/permissions.md's policy block is the stored expected document, so the two cannot drift apart."""
    page = (ROOT / "docs" / "permissions.md").read_text()
    marker = "tests/fixtures/iam/sample-app-deploy.json; a test compares this block with it"
    block = page[page.index(marker):]
    shown = block[block.index("```json\n") + len("```json\n"):block.index("\n```\n")]
    stored = (ROOT / "tests" / "fixtures" / "iam" / "sample-app-deploy.json").read_text()
    assert json.loads(shown) == json.loads(stored)
