"""Table tests for the pure helpers the strategies decide with: no AWS, no Docker, no Prefect."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.aws.codedeploy import phase_of
from tasks.aws.errors import error_code, translate
from tasks.aws.traffic import Routing, weights_of
from tasks.core.errors import AccessDenied, NotFound, TransientError
from tasks.core.report import related
from tasks.release.outcome import OUTCOME_TYPES, outcome_tag
from tasks.release.runs import run_tags
from tasks.release.stages import order_words
from tasks.strategies.rolling import Rollout, rollout_state
from tasks.strategies.task_sets import plan_green

BLUE_TG, GREEN_TG = "arn:tg/blue", "arn:tg/green"
ROUTING = Routing("arn:l/prod", "arn:l/test", "http://p", "http://t", (BLUE_TG, GREEN_TG), ("blue", "green"))


def ts(arn: str, td: str, status: str, tg: str) -> dict[str, Any]:
    return {"taskSetArn": arn, "taskDefinition": td, "status": status, "loadBalancers": [{"targetGroupArn": tg}]}


@pytest.mark.parametrize(
    ("info", "events", "phase"),
    [
        ({"status": "Succeeded"}, [], "succeeded"),
        ({"status": "InProgress", "instanceTerminationWaitTimeStarted": True}, [], "terminating"),
        ({"status": "InProgress"}, [("AllowTraffic", "InProgress")], "shifting"),
        ({"status": "InProgress"}, [("BeforeAllowTraffic", "Succeeded")], "shifting"),
        ({"status": "Ready"}, [("AfterInstall", "Succeeded")], "ready"),
        ({"status": "InProgress"}, [("Install", "InProgress")], None),
        ({"status": "Created"}, [], None),
    ],
)
def test_phase_of(info: dict[str, Any], events: list[tuple[str, str]], phase: str | None) -> None:
    target = {"lifecycleEvents": [{"lifecycleEventName": n, "status": s} for n, s in events]}
    assert phase_of(info, target) == phase


def dep(id_: str, status: str, rollout: str, td: str = "td:2", reason: str = "") -> dict[str, Any]:
    return {"id": id_, "status": status, "rolloutState": rollout, "taskDefinition": td, "rolloutStateReason": reason}


OURS = Rollout("ecs-svc/1", "td:2", "td:1", 0.0)


@pytest.mark.parametrize(
    ("deployments", "expect"),
    [
        ([dep("ecs-svc/1", "PRIMARY", "COMPLETED")], "COMPLETED"),
        ([dep("ecs-svc/1", "PRIMARY", "IN_PROGRESS"), dep("ecs-svc/0", "ACTIVE", "COMPLETED", "td:1")], None),
        ([dep("ecs-svc/1", "ACTIVE", "FAILED", reason="circuit breaker"),
          dep("ecs-svc/0", "PRIMARY", "IN_PROGRESS", "td:1")], "ECS rollout failed: circuit breaker"),
        ([dep("ecs-svc/2", "PRIMARY", "IN_PROGRESS", "td:3")], "no longer PRIMARY"),
    ],
)
def test_rollout_state(deployments: list[dict[str, Any]], expect: str | None) -> None:
    service = {"serviceName": "svc", "deployments": deployments}
    if expect == "COMPLETED":
        assert rollout_state(service, OURS) is service  # done: the description that proved it
    elif expect is None:
        assert rollout_state(service, OURS) is None
    else:
        with pytest.raises(Exception, match=str(expect)):
            rollout_state(service, OURS)


@pytest.mark.parametrize(
    ("task_sets", "td", "expect"),
    [
        # first release: no blue, green on the first target group
        ([], "td:1", (None, BLUE_TG, None, None, False, False)),
        # blue on the blue group: green goes to the other one
        ([ts("ts/b", "td:1", "PRIMARY", BLUE_TG)], "td:2", (None, GREEN_TG, "ts/b", BLUE_TG, False, False)),
        # blue on the green group: green alternates back
        ([ts("ts/b", "td:1", "PRIMARY", GREEN_TG)], "td:2", (None, BLUE_TG, "ts/b", GREEN_TG, False, False)),
        # a rerun finds its own green already there: reused
        ([ts("ts/b", "td:1", "PRIMARY", BLUE_TG), ts("ts/g", "td:2", "ACTIVE", GREEN_TG)], "td:2",
         ("ts/g", GREEN_TG, "ts/b", BLUE_TG, True, False)),
        # the release already runs as primary: nothing to start
        ([ts("ts/b", "td:2", "PRIMARY", GREEN_TG)], "td:2", ("ts/b", GREEN_TG, None, None, True, True)),
    ],
)
def test_plan_green(task_sets: list[dict[str, Any]], td: str, expect: tuple[Any, ...]) -> None:
    green = plan_green({"taskSets": task_sets}, ROUTING, td)
    got = (green.task_set, green.target_group, green.blue_task_set, green.blue_target_group, green.reused,
           green.already_primary)
    assert got == expect


def forward(*groups: tuple[str, int]) -> dict[str, Any]:
    tgs = [{"TargetGroupArn": a, "Weight": w} for a, w in groups]
    return {"DefaultActions": [{"Type": "forward", "ForwardConfig": {"TargetGroups": tgs}}]}


@pytest.mark.parametrize(
    ("listener", "expect"),
    [
        (forward((BLUE_TG, 100)), {BLUE_TG: 100}),
        (forward((BLUE_TG, 80), (GREEN_TG, 20)), {BLUE_TG: 80, GREEN_TG: 20}),
        (forward((BLUE_TG, 1), (GREEN_TG, 3)), {BLUE_TG: 25, GREEN_TG: 75}),
        (forward((BLUE_TG, 0), (GREEN_TG, 0)), {BLUE_TG: 0, GREEN_TG: 0}),
        ({"DefaultActions": [{"Type": "forward", "TargetGroupArn": BLUE_TG}]}, {BLUE_TG: 100}),
        ({"DefaultActions": [{"Type": "fixed-response"}]}, {}),
    ],
)
def test_weights_of(listener: dict[str, Any], expect: dict[str, int]) -> None:
    assert weights_of(listener) == expect


def client_error(code: str, status: int = 400, op: str = "CreateTaskSet", prefix: str = "ecs") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m", "IamPrefix": prefix}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (client_error("AccessDeniedException"), AccessDenied, "grant ecs:CreateTaskSet"),
        (client_error("AccessDenied", op="ModifyListener", prefix="elasticloadbalancing"), AccessDenied,
         "elasticloadbalancing:ModifyListener"),
        (client_error("ThrottlingException"), TransientError, "transient"),
        (client_error("Throttling", op="DescribeListeners"), TransientError, "transient"),
        (client_error("InternalFailure", 500), TransientError, "transient"),
        (client_error("SomethingNew", 503), TransientError, "transient"),
        (client_error("ClusterNotFoundException"), NotFound, "ECS cluster not found"),
        (client_error("TargetGroupNotFound", op="DescribeTargetGroups"), NotFound, "target group not found"),
    ],
)
def test_translate_by_error_code(exc: ClientError, kind: type[Exception], words: str) -> None:
    typed = translate(exc, service="svc")
    assert isinstance(typed, kind)
    assert words in str(typed)
    assert "svc" in str(typed)


def test_translate_leaves_unknown_codes_and_other_errors_alone() -> None:
    unknown = client_error("InvalidParameterException")
    assert translate(unknown) is unknown
    other = ValueError("x")
    assert translate(other) is other
    assert error_code(unknown) == "InvalidParameterException"
    assert error_code(other) == ""


STOP_PROBE = """
from tasks.core.waits import Aborted, abort_when, checkpoint, stop_every_release
with abort_when(lambda: None):
    checkpoint()  # nothing asked: goes on
stop_every_release("the fleet run is stopping")
with abort_when(None):
    checkpoint()  # a rollback's waits (checks off) are never cut short
with abort_when(lambda: None):
    try:
        checkpoint()
    except Aborted as exc:
        print("aborted:", exc)
"""


def test_a_fleet_stop_aborts_every_release_wait_but_never_a_rollback() -> None:
    """The fleet's main thread gets the signal and passes it on to the releases in its other threads."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STOP_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "aborted: the fleet run is stopping"



@pytest.mark.parametrize("outcome", list(OUTCOME_TYPES))
def test_the_verdict_tag_is_the_one_the_ui_lists_show(outcome: str) -> None:
    """The UI (3.9) sorts a run's tags and shows the last ones that fit (one on the deployment page)."""
    tags = [*run_tags("sample-app", "3356bf2" + "0" * 33, "webhook"), "ecs-pipeline", "fleet", outcome_tag(outcome)]
    assert sorted(tags, key=str.casefold)[-1] == outcome_tag(outcome)


def test_events_carry_the_reason_in_a_related_resource_id_the_event_page_shows() -> None:
    """The UI shows a related resource that is not one of Prefect's own by its id, never by its name."""
    found = related({"sha": "a" * 40, "reason": "GET / returned 500\n  | FAIL root", "traffic": "production on blue"})
    assert [r["prefect.resource.id"] for r in found] == [
        "ecs-pipeline.commit." + "a" * 40, "ecs-pipeline.reason: GET / returned 500 | FAIL root",
        "ecs-pipeline.traffic: production on blue",
    ]
    assert [r["prefect.resource.role"] for r in found] == ["commit", "reason", "traffic"]


@pytest.mark.parametrize(("ancestry", "says"), [
    ("same", "production runs 9cd3bbd11111, the same commit"),
    ("newer", "production runs 9cd3bbd11111, which is older than a93aa60 (a93aa60 descends from it)"),
    ("older", "production runs 9cd3bbd11111, which is newer than a93aa60 (a93aa60 is in its history)"),
    ("diverged", "production runs 9cd3bbd11111, which has diverged from a93aa60 (neither descends from the other)"),
    ("missing", "production runs 9cd3bbd11111, and a93aa60 is not a commit of the repository"),
])
def test_the_order_of_two_commits_names_both(ancestry: str, says: str) -> None:
    assert order_words("a93aa60" + "0" * 33, "9cd3bbd11111" + "2" * 28, ancestry) == says
    assert "(newer)" not in says


# --- the rollout wait's look at the expected end ---------------------------------------------------------------------

def test_the_last_rollout_lasted_from_its_creation_to_its_last_update() -> None:
    from datetime import UTC, datetime, timedelta

    from tasks.strategies.rolling import last_rollout_seconds

    created = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def service(state: str, updated: Any = created + timedelta(seconds=83.5)) -> dict[str, Any]:
        return {"deployments": [{"status": "PRIMARY", "rolloutState": state, "createdAt": created,
                                 "updatedAt": updated}, {"status": "ACTIVE", "rolloutState": "COMPLETED",
                                                         "createdAt": created, "updatedAt": created}]}

    assert last_rollout_seconds(service("COMPLETED")) == 83.5
    assert last_rollout_seconds(service("IN_PROGRESS")) is None  # not over: no length yet
    assert last_rollout_seconds(service("COMPLETED", created)) is None  # nothing to go by
    assert last_rollout_seconds(service("COMPLETED", "2026-12-07T12:01:23Z")) is None
    assert last_rollout_seconds({"deployments": []}) is None


def test_a_wait_looks_at_the_expected_time_once_then_keeps_its_pace() -> None:
    import time

    from tasks.core.waits import poll

    def looks_until(second: float, **kwargs: Any) -> list[float]:
        seen: list[float] = []
        start = time.monotonic()

        def check() -> str | None:
            seen.append(time.monotonic() - start)
            return "done" if len(seen) == 2 or seen[-1] >= second else None

        poll(check, timeout=30, what="a test", **kwargs)
        return seen

    looks = looks_until(99, first=3.0, cap=3.0, look_at=time.monotonic() + 0.5)
    assert 0.5 <= looks[1] < 2.0, looks  # the pause of 2.4-3.6 s ended at the expected time
    later = looks_until(99, first=0.3, cap=0.3, look_at=time.monotonic() + 60)
    assert later[1] < 1.0, later  # an expected time beyond the pause changes nothing


def test_the_expected_look_comes_a_tenth_after_the_last_rollouts_length_at_most_half_a_pause() -> None:
    import time

    from tasks.strategies.rolling import Rollout, expected_look

    started = time.time()
    for took, pace, after in ((80.0, 5.0, 82.5), (1.3, 0.5, 1.43), (None, 5.0, None)):
        rollout = Rollout("ecs-svc/1", "td:2", "td:1", started, took_last=took)
        at = expected_look(rollout, pace)
        if after is None:
            assert at is None
        else:
            assert at is not None and abs((at - time.monotonic()) - (started + after - time.time())) < 0.05
