"""Contract: every AWS call the pipeline makes in a release of each strategy, held to botocore's model.

tests/sandbox/test_contract.py holds the sandbox's answers to the output shapes (an independent
client reads them). This module holds the pipeline's own calls to the model: one release per
strategy (task-sets, codedeploy, rolling, ecs-native; task-sets: a new EXTERNAL service's first
release, then one over it) runs in this process, and botocore's own event hooks on the clients the
factory hands out (``tasks.aws.clients.shared_client``) watch every call. That is observing, not
faking: the answers still come from the sandbox over HTTP, and the pipeline gets them unchanged
apart from their dicts and lists noting each key it looks up.

- **Requests**, as the pipeline passed them, against the operation's input shape: botocore's
  ``ParamValidator`` (types, required members), then what botocore leaves to AWS's side: enum
  values, maximum lengths and values, members the model marks deprecated.
- **Response fields the pipeline reads** (``[key]``, ``.get``, ``in``, ``pop``; a list when it is
  iterated, indexed or measured) against the output shape: a member of it, not deprecated, and
  not one whose documentation takes it back ("always null", "no longer supported", "always
  reported as zero", "returns an empty list", "deprecated"), nor one an operation's documentation
  takes back (OPERATION_NOTES: each quoted from botocore's model, and checked to still be there).
  A top-level scalar (``deploymentId``, ``Account``) cannot be watched once the answer is returned,
  so it counts as read whenever it is present.
- **Nothing escaped the watch**: the sandbox's request log, asked for the calls sent with the
  pipeline's User-Agent during the releases, names no operation the watch did not see.

Recorded here, not during ``make demo``: which fields a release reads is only visible inside the
releasing process, the demo's releases run in the ``ecs-pipeline`` processes it starts, and
``make test`` must pass before any demo ran (either order). The sandbox's own log, which the
demo's sandbox keeps too, only names the operations.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate
import pytest

from harness.faults import control, last_request
from harness.services import ServiceUnderTest, make_service, seed_serving
from tasks.aws.clients import AwsClients
from tasks.aws.retry import USER_AGENT
from tasks.core.settings import Settings

# The AWS services the pipeline's clients talk to (botocore names).
SERVICES = ("ecs", "ecr", "elbv2", "cloudwatch", "codedeploy", "sts", "logs", "ssm", "secretsmanager", "iam")
# The sandbox's request log names a service by its signing name where botocore's differs.
SANDBOX_NAMES = {"elasticloadbalancing": "elbv2", "monitoring": "cloudwatch"}
STRATEGIES = ("task-sets", "codedeploy", "rolling", "ecs-native")

# A member whose own documentation says one of these is not a field AWS promises to fill.
NOT_PROMISED = re.compile(
    r"\b(is always null|always reported as zero|no longer supported|returns an empty list|(is|been) deprecated)\b",
    re.IGNORECASE,
)
# What an operation's documentation takes back: (service, operation) -> (sentence, fields of its answer).
# Each sentence is quoted from botocore's model (test_operation_notes_are_quoted_from_botocore).
OPERATION_NOTES: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("codedeploy", "GetDeployment"): (
        "The content property of the appSpecContent object in the returned revision is always null.",
        ("deploymentInfo.revision.appSpecContent.content", "deploymentInfo.previousRevision.appSpecContent.content"),
    ),
}
# ECS says once, in RunTask's documentation, what holds for its whole API: an answer to a change does not
# promise what ECS does next. The deployment a service runs is decided after UpdateService answers
# (containers-roadmap #2709 asks AWS to document it as synchronous; it is not), so its answer's
# currentServiceDeployment may still name the previous one.
ECS_EVENTUAL = ("ecs", "RunTask", "The Amazon ECS API follows an eventual consistency model.")
EVENTUAL_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ecs", "UpdateService"): ("service.currentServiceDeployment",),
    ("ecs", "CreateService"): ("service.currentServiceDeployment",),
}
# Operation documentation that mentions a note but takes back no response field the pipeline could read.
NOTES_WITHOUT_FIELDS = {
    ("ecs", "RunTask"),  # the eventual consistency sentence: EVENTUAL_FIELDS applies it
    ("codedeploy", "BatchGetDeploymentTargets"),  # "instead of the deprecated BatchGetDeploymentInstances"
}
NOTE_WORDS = re.compile(r"always null|eventual consisten|deprecated|no longer supported", re.IGNORECASE)


# -- the watch ---------------------------------------------------------------------------------------
Path_ = tuple[str, ...]


class SeenDict(dict):  # type: ignore[type-arg]
    """A parsed answer's structure that notes each key the pipeline looks up."""

    __slots__ = ("_seen",)
    _seen: tuple[Watch, tuple[str, str], Path_]

    def _note(self, key: Any) -> None:
        watch, op, path = self._seen
        watch.read(op, (*path, str(key)))

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return dict.__contains__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return dict.setdefault(self, key, default)

    def __reduce__(self) -> Any:  # a copy or a pickle is a plain dict: the watch stays in this process
        return (dict, (dict(self),))


class SeenList(list):  # type: ignore[type-arg]
    """A parsed answer's list: iterating, indexing or measuring it reads the field."""

    __slots__ = ("_seen",)
    _seen: tuple[Watch, tuple[str, str], Path_]

    def _note(self) -> None:
        watch, op, path = self._seen
        watch.read(op, path)

    def __iter__(self) -> Iterator[Any]:
        self._note()
        return list.__iter__(self)

    def __getitem__(self, index: Any) -> Any:
        self._note()
        return list.__getitem__(self, index)

    def __len__(self) -> int:
        self._note()
        return list.__len__(self)

    def __reduce__(self) -> Any:
        return (list, (list(self),))


@dataclass
class Watch:
    """botocore event hooks on the factory's clients: each request's parameters, each key read of each answer."""

    requests: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    reads: set[tuple[str, str, Path_]] = field(default_factory=set)
    answered: set[tuple[str, str]] = field(default_factory=set)
    by_strategy: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    strategy: str = ""
    clients: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build", self.on_request, unique_id="contract-request")
        client.meta.events.register("after-call", self.on_answer, unique_id="contract-answer")
        self.clients.append(client)

    def detach(self) -> None:
        for client in self.clients:
            client.meta.events.unregister("before-parameter-build", unique_id="contract-request")
            client.meta.events.unregister("after-call", unique_id="contract-answer")

    def on_request(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self.lock:
            self.requests[(model.service_model.service_name, model.name)].append(_plain(params))

    def on_answer(self, http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        op = (model.service_model.service_name, model.name)
        with self.lock:
            self.answered.add(op)
            self.by_strategy[self.strategy].add(op)
        if http_response.status_code >= 300 or not isinstance(parsed, dict) or "Error" in parsed:
            return
        for key, value in list(parsed.items()):
            if key == "ResponseMetadata":
                continue
            if isinstance(value, dict | list):
                parsed[key] = self.wrap(value, op, (key,))
            else:
                self.read(op, (key,))  # not watchable once returned: present counts as read

    def wrap(self, value: Any, op: tuple[str, str], path: Path_) -> Any:
        seen: SeenDict | SeenList
        if isinstance(value, dict):
            seen = SeenDict({k: self.wrap(v, op, (*path, str(k))) for k, v in value.items()})
        elif isinstance(value, list):
            seen = SeenList(self.wrap(v, op, (*path, "[]")) for v in value)
        else:
            return value
        seen._seen = (self, op, path)
        return seen

    def read(self, op: tuple[str, str], path: Path_) -> None:
        with self.lock:
            self.reads.add((*op, path))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    if isinstance(value, list):
        return [_plain(v) for v in list.__iter__(value)]
    return value


# -- botocore's model ------------------------------------------------------------------------------------
@cache
def session() -> Any:
    return botocore.session.get_session()


@cache
def service_model(service: str) -> Any:
    return session().get_service_model(service)


@cache
def deprecated_members(service: str) -> frozenset[tuple[str, str]]:
    """(structure, member) pairs the model marks ``deprecated`` (a member trait botocore's Shape does not expose)."""
    shapes = session().get_service_data(service)["shapes"]
    return frozenset((name, member) for name, shape in shapes.items()
                     for member, ref in shape.get("members", {}).items() if ref.get("deprecated"))


def text(documentation: str) -> str:
    """Model documentation without its HTML, whitespace folded."""
    return " ".join(re.sub(r"<[^>]+>", " ", documentation or "").split())


def request_problems(service: str, value: Any, shape: Any, path: str) -> list[str]:
    """What AWS refuses that botocore's client-side validation lets through: enums, maxima, deprecated members."""
    out: list[str] = []
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key not in shape.members:
                continue  # ParamValidator reports it
            if (shape.name, key) in deprecated_members(service):
                out.append(f"{path}.{key}: deprecated in the model")
            out += request_problems(service, item, shape.members[key], f"{path}.{key}")
    elif kind == "list" and isinstance(value, list):
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            out.append(f"{path}: {len(value)} items, the model allows at most {shape.metadata['max']}")
        for i, item in enumerate(value):
            out += request_problems(service, item, shape.member, f"{path}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            out += request_problems(service, item, shape.value, f"{path}[{key}]")
    elif kind == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            out.append(f"{path}: {value!r} is not one of {shape.enum}")
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            out.append(f"{path}: {len(value)} characters, the model allows at most {shape.metadata['max']}")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, int | float) \
            and "max" in shape.metadata and value > shape.metadata["max"]:
        out.append(f"{path}: {value} is above the model's maximum {shape.metadata['max']}")
    return out


def check_request(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    shape = service_model(service).operation_model(operation).input_shape
    if shape is None:
        return [] if not params else [f"{service}.{operation} takes no input, got {sorted(params)}"]
    report = botocore.validate.ParamValidator().validate(params, shape)
    out = [f"{service}.{operation}: {report.generate_report()}"] if report.has_errors() else []
    return out + request_problems(service, params, shape, f"{service}.{operation}")


def dotted(path: Path_) -> str:
    return ".".join(path).replace(".[]", "[]")


def check_read(service: str, operation: str, path: Path_) -> str | None:
    """Why reading PATH of OPERATION's answer leans on what AWS does not promise, or None."""
    shape = service_model(service).operation_model(operation).output_shape
    where = f"{service}.{operation} {dotted(path)}"
    if shape is None:
        return f"{where}: the operation answers nothing"
    member = None
    for part in path:
        if shape.type_name == "list":
            if part != "[]":
                return f"{where}: {part!r} read from a list"
            shape = shape.member
        elif shape.type_name == "map":
            shape = shape.value
        elif shape.type_name == "structure":
            if part not in shape.members:
                return f"{where}: not in the model's {shape.name} (AWS never sends it)"
            if (shape.name, part) in deprecated_members(service):
                return f"{where}: deprecated in the model"
            member = shape.members[part]
            found = NOT_PROMISED.search(text(member.documentation))
            if found:
                return f"{where}: the model says it {found[0]!r}"
            shape = member
        else:
            return f"{where}: {part!r} read from a {shape.type_name}"
    field_path = dotted(tuple(p for p in path))
    note = OPERATION_NOTES.get((service, operation))
    if note and field_path in note[1]:
        return f"{where}: {operation}'s documentation says: {note[0]}"
    if field_path in EVENTUAL_FIELDS.get((service, operation), ()):
        return (f"{where}: the answer to a change, and ECS says (in {ECS_EVENTUAL[1]}'s documentation): "
                f"{ECS_EVENTUAL[2]} Read the deployment from ListServiceDeployments instead")
    return None


# -- the releases -------------------------------------------------------------------------------------------
@dataclass
class Recorded:
    watch: Watch
    sandbox_ops: set[tuple[str, str]]
    per_strategy: dict[str, set[tuple[str, str]]]
    failed: dict[str, str]
    releases: int  # pipeline runs watched, for every strategy


def release(sut: ServiceUnderTest, artifacts: Path) -> tuple[int, str | None]:
    """Release the service with the pipeline: (runs made, None when each deployed, else why not).

    A seeded ECS or CodeDeploy service serves its seed release, and v1 goes out over it. A new task-sets
    (EXTERNAL) service has no task set until its first release, as on a real account: v1 is that first
    release (CreateTaskSet with the YAML's network), then v2 goes out over it, blue to green, so the
    listener changes, the primary swap and blue's removal are watched too.
    """
    from flows.pipeline import deploy_service
    from tasks.release.outcome import outcome_of

    versions = ["v1"]
    if sut.cfg.strategy.type == "task-sets":
        versions.append("v2")
    else:
        try:
            seed_serving(sut)
        except AssertionError as exc:
            return 0, f"seed: {exc}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        env.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(artifacts))
        for runs, version in enumerate(versions, start=1):
            if version != "v1":  # make_service committed v1
                sut.commit(version)
            state = deploy_service(sut.name, return_state=True)
            if outcome_of(state) != "Deployed":
                return runs, f"{version}: {state.message}"
    return len(versions), None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A release of a new service with each strategy, every call the pipeline made watched.

    A release that does not deploy is reported by test_every_strategy_deployed; its calls are checked all the same.
    """
    made = [make_service(tmp_path_factory.mktemp(s.replace("-", "")), strategy=s) for s in STRATEGIES]
    clients = AwsClients(Settings())
    watch = Watch()
    for each in (clients, *(clients.for_service(sut.cfg) for sut in made)):  # the worker's, and each deploy role's
        for service in SERVICES:
            watch.attach(each.get(service))
    failed: dict[str, str] = {}
    releases = 0
    start = last_request()
    try:
        for strategy, sut in zip(STRATEGIES, made, strict=True):
            watch.strategy = strategy
            runs, why = release(sut, tmp_path_factory.mktemp("artifacts"))
            releases += runs
            if why:
                failed[strategy] = why
    finally:
        watch.detach()
    agent = USER_AGENT.split("/", 1)[0]
    logged = control("GET", f"/_sandbox/requests?since={start}&agent={agent}")["requests"]
    sandbox_ops = {(SANDBOX_NAMES.get(r["service"], r["service"]), r["operation"]) for r in logged}
    yield Recorded(watch, sandbox_ops, dict(watch.by_strategy), failed, releases)
    for sut in made:
        sut.cleanup()


def test_every_strategy_deployed(recorded: Recorded) -> None:
    assert recorded.failed == {}


def test_no_pipeline_call_escaped_the_watch(recorded: Recorded) -> None:
    assert recorded.sandbox_ops, "the sandbox logged no call with the pipeline's User-Agent"
    escaped = recorded.sandbox_ops - recorded.watch.answered
    assert escaped == set(), "calls made through a client the factory did not hand out"


def test_each_strategy_made_its_own_calls(recorded: Recorded) -> None:
    """The releases did what each strategy does (else the checks below would pass on too little)."""
    ops = {s: {op for _, op in calls} for s, calls in recorded.per_strategy.items() if s not in recorded.failed}
    expected = {"task-sets": {"CreateTaskSet", "ModifyListener", "UpdateServicePrimaryTaskSet", "DeleteTaskSet"},
                "codedeploy": {"CreateDeployment", "GetDeployment", "ContinueDeployment"},
                "rolling": {"UpdateService", "DescribeServices"},
                "ecs-native": {"UpdateService", "DescribeServiceDeployments", "ContinueServiceDeployment"}}
    for strategy, calls in ops.items():
        assert expected[strategy] <= calls, strategy
        assert {"RegisterTaskDefinition", "GetCallerIdentity"} <= calls, strategy


def test_every_request_fits_the_input_shape(recorded: Recorded) -> None:
    problems = [p for (service, operation), calls in sorted(recorded.watch.requests.items())
                for params in calls for p in check_request(service, operation, params)]
    assert problems == []
    assert len(recorded.watch.requests) >= 20, sorted(recorded.watch.requests)


# What botocore itself reads of an answer, not the pipeline: its assume-role credential fetcher (a service's
# deploy_role_arn) looks for an account id newer STS answers may carry, and its cache copies the whole answer.
BOTOCORE_READS = {("sts", "AssumeRole", ("Credentials", "AccountId")), ("sts", "AssumeRole", ("PackedPolicySize",))}


def test_every_field_read_is_one_aws_promises(recorded: Recorded) -> None:
    reads = sorted(recorded.watch.reads - BOTOCORE_READS)
    problems = sorted({p for service, operation, path in reads if (p := check_read(service, operation, path))})
    assert problems == []
    print(f"{len(reads)} fields read in {len({r[:2] for r in reads})} operations' answers")
    assert len(reads) >= 50, "the watch saw too few reads to mean anything"


def test_the_account_is_asked_once_per_release(recorded: Recorded) -> None:
    """<AWS_ACCOUNT_ID> in the templates: STS GetCallerIdentity once per run, not once per render."""
    assert len(recorded.watch.requests[("sts", "GetCallerIdentity")]) == recorded.releases


# -- the checks themselves, on known cases ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("service", "operation", "path", "verdict"),
    [
        ("codedeploy", "GetDeployment", ("deploymentInfo", "revision", "appSpecContent", "content"), "always null"),
        ("codedeploy", "GetDeployment", ("deploymentInfo", "revision", "appSpecContent", "sha256"), None),
        ("codedeploy", "GetDeployment", ("deploymentInfo", "status"), None),
        ("ecs", "UpdateService", ("service", "currentServiceDeployment"), "eventual consistency model"),
        ("ecs", "DescribeServices", ("services", "[]", "currentServiceDeployment"), None),
        ("ecs", "DescribeServices", ("services", "[]", "color"), "not in the model's Service"),
        ("logs", "DescribeLogStreams", ("logStreams", "[]", "storedBytes"), "deprecated in the model"),
        ("logs", "DescribeLogGroups", ("logGroups", "[]", "storedBytes"), None),
        ("logs", "PutLogEvents", ("nextSequenceToken",), "deprecated"),
        ("ecs", "ListTasks", ("taskArns", "[]"), None),
        ("ecs", "DescribeTaskDefinition", ("taskDefinition", "containerDefinitions", "[]", "logConfiguration",
                                           "options", "awslogs-group"), None),
    ],
)
def test_a_read_is_judged_by_the_model(service: str, operation: str, path: Path_, verdict: str | None) -> None:
    found = check_read(service, operation, path)
    if verdict is None:
        assert found is None
    else:
        assert found is not None and verdict in found


@pytest.mark.parametrize(
    ("service", "operation", "params", "verdict"),
    [
        ("ecs", "UpdateService", {"cluster": "c", "service": "s", "forceNewDeployment": "yes"}, "Invalid type"),
        ("ecs", "CreateTaskSet", {"cluster": "c", "service": "s", "taskDefinition": "t", "launchType": "LAMBDA"},
         "'LAMBDA' is not one of"),
        ("codedeploy", "CreateDeployment", {"applicationName": "a" * 101}, "the model allows at most 100"),
        ("ecs", "UpdateService", {"cluster": "c", "service": "s", "taskDefinition": "t"}, None),
    ],
)
def test_a_request_is_judged_by_the_model(service: str, operation: str, params: dict[str, Any],
                                          verdict: str | None) -> None:
    found = "\n".join(check_request(service, operation, params))
    if verdict is None:
        assert found == ""
    else:
        assert verdict in found, found


def test_a_read_through_the_watch_is_noted() -> None:
    watch = Watch()
    answer = {"services": [{"serviceName": "s", "taskSets": [{"id": "a"}]}], "failures": []}
    wrapped = watch.wrap(answer["services"], ("ecs", "DescribeServices"), ("services",))
    svc = wrapped[0]
    assert svc.get("taskSets")[0]["id"] == "a" and "deployments" not in svc
    assert {dotted(p) for *_, p in watch.reads} == {
        "services", "services[].taskSets", "services[].taskSets[].id", "services[].deployments"}
    import copy
    import json
    import pickle
    assert json.loads(json.dumps(wrapped)) == answer["services"]
    assert type(copy.deepcopy(svc)) is dict and type(pickle.loads(pickle.dumps(wrapped))) is list


def test_operation_notes_are_quoted_from_botocore() -> None:
    for (service, operation), (sentence, _) in OPERATION_NOTES.items():
        assert sentence in text(service_model(service).operation_model(operation).documentation)
    service, operation, sentence = ECS_EVENTUAL
    assert sentence in text(service_model(service).operation_model(operation).documentation)


def test_every_note_on_an_operation_the_pipeline_calls_is_interpreted(recorded: Recorded) -> None:
    """A new "always null" or "eventual consistency" sentence on a called operation needs a line above."""
    unread = []
    for service, operation in sorted(recorded.watch.answered | {ECS_EVENTUAL[:2]}):
        doc = text(service_model(service).operation_model(operation).documentation)
        known = (service, operation) in OPERATION_NOTES or (service, operation) in NOTES_WITHOUT_FIELDS
        if NOTE_WORDS.search(doc) and not known:
            unread.append(f"{service}.{operation}")
    assert unread == []
