"""`--json` of `migrate`, `poll` and `approve`: each document is built by a pure function, checked here
against its schema with tables of inputs (offline); tests/test_ecs_native.py, tests/test_triggers.py and
tests/test_approval.py check the documents of real calls.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from flows.migrate import MIGRATE_SCHEMA, RULE_PENDING, Migration, migration_document, migration_lines
from flows.trigger_cli import APPROVE_SCHEMA, POLL_SCHEMA, approve_document, poll_document
from tests.test_status_all import keys_are_snake_case, schema_errors

UI = "http://127.0.0.1:4200"
RUN = "0b6f6f2e-4f7c-4d43-9a53-2f1d1b7e8c11"
AT = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


def link(run_id: str) -> str:
    return f"{UI}/runs/flow-run/{run_id}"


def check(document: dict[str, Any], schema: dict[str, Any]) -> None:
    assert schema_errors(document, schema) == [], json.dumps(document, indent=2)
    assert keys_are_snake_case(document)
    assert json.loads(json.dumps(document)) == document, "plain JSON: no tuples, datetimes or UUIDs"


def test_schema_checker_rejects_what_the_schemas_rule_out() -> None:
    """The checker these tests rely on fails on a wrong type, a missing key and a time without offset."""
    good = approve_document(RUN, False, "", None, AT, link(RUN))
    assert schema_errors({**good, "answered": "yes"}, APPROVE_SCHEMA)
    assert schema_errors({k: v for k, v in good.items() if k != "error"}, APPROVE_SCHEMA)
    assert schema_errors({**good, "answered_at": "2026-03-01T07:30:15"}, APPROVE_SCHEMA)
    assert schema_errors({**good, "url": "runs/flow-run/x"}, APPROVE_SCHEMA)


POLLED = {
    "started": [{"service": "shop", "sha": "a" * 40, "flow_run_id": RUN}],
    "skipped": {"cart": f"run {RUN} (Scheduled) already has bbbbbbbbbbbb"},
    "unchanged": ["web", "api"],
    "errors": {"gone": "branch main not found in ../repos/gone"},
}


@pytest.mark.parametrize(
    ("result", "dry_run", "started", "skipped", "errors"),
    [
        (POLLED, False, [{"service": "shop", "sha": "a" * 40, "run_id": RUN, "url": link(RUN)}],
         [{"service": "cart", "reason": f"run {RUN} (Scheduled) already has bbbbbbbbbbbb"}],
         [{"service": "gone", "error": "branch main not found in ../repos/gone"}]),
        # a dry run starts nothing: no run id, no link
        ({**POLLED, "started": [{"service": "shop", "sha": "a" * 40, "flow_run_id": None}], "errors": {}}, True,
         [{"service": "shop", "sha": "a" * 40, "run_id": None, "url": None}],
         [{"service": "cart", "reason": f"run {RUN} (Scheduled) already has bbbbbbbbbbbb"}], []),
        ({"started": [], "skipped": {}, "unchanged": [], "errors": {}}, False, [], [], []),
    ],
)
def test_poll_document(result: dict[str, Any], dry_run: bool, started: list[Any], skipped: list[Any],
                       errors: list[Any]) -> None:
    document = poll_document(result, "deploy-service/deploy-service", dry_run, AT, link)
    check(document, POLL_SCHEMA)
    assert document["started"] == started and document["skipped"] == skipped and document["errors"] == errors
    assert document["dry_run"] is dry_run and document["unchanged"] == sorted(result["unchanged"])
    assert document["polled_at"] == "2026-03-01T07:30:15+00:00"


@pytest.mark.parametrize(
    ("run", "reject", "error", "url", "answer", "answered", "answered_at"),
    [
        (RUN, False, None, link(RUN), "approved", True, "2026-03-01T07:30:15+00:00"),
        (RUN, True, None, link(RUN), "rejected", True, "2026-03-01T07:30:15+00:00"),
        (RUN, False, f"run {RUN} is not waiting for approval", link(RUN), "approved", False, None),
        (RUN, False, f"no flow run {RUN}", None, "approved", False, None),  # no such run: no link
        ("3f2c9a4e-...", True, "'3f2c9a4e-...' is not a flow run id", None, "rejected", False, None),
    ],
)
def test_approve_document(run: str, reject: bool, error: str | None, url: str | None, answer: str, answered: bool,
                          answered_at: str | None) -> None:
    document = approve_document(run, reject, "not during the sale", error, AT, url)
    check(document, APPROVE_SCHEMA)
    assert (document["answer"], document["answered"], document["url"], document["answered_at"], document["error"]) \
        == (answer, answered, url, answered_at, error)
    assert document["run_id"] == run and document["comment"] == "not during the sale"


PROD_L, TEST_L = "arn:listener/prod", "arn:listener/test"
BLUE, GREEN = "arn:tg/app-a", "arn:tg/app-b"


def planned(prod_rule: str, test_rule: str) -> Migration:
    """plan_migration's answer for a service whose listeners have (or lack: RULE_PENDING) a rule with both groups."""
    pending = {listener: {BLUE: 100, GREEN: 0}
               for listener, rule in ((PROD_L, prod_rule), (TEST_L, test_rule)) if rule == RULE_PENDING}
    request = {"cluster": "apps", "service": "app", "taskDefinition": "arn:task-definition/app:7",
               "deploymentController": {"type": "ECS"},
               "loadBalancers": [{"targetGroupArn": BLUE, "containerName": "web", "containerPort": 8080,
                                  "advancedConfiguration": {"alternateTargetGroupArn": GREEN, "roleArn": "arn:role/r",
                                                            "productionListenerRule": prod_rule,
                                                            "testListenerRule": test_rule}}]}
    return Migration(request, pending, {"productionListenerRule": PROD_L, "testListenerRule": TEST_L}, service="shop")


def applied(migration: Migration) -> Migration:
    """What migrate --apply leaves: the pending rules created, the service deployment that moved it."""
    adv = migration.request["loadBalancers"][0]["advancedConfiguration"]
    migration.created = {listener: f"{listener}/rule/new" for listener in migration.create_rules}
    for key, listener in migration.listeners.items():
        if adv[key] == RULE_PENDING:
            adv[key] = migration.created[listener]
    migration.service_deployment, migration.finished_at = "arn:service-deployment/apps/app/1", AT
    return migration


@pytest.mark.parametrize(
    ("migration", "rules", "deployment", "finished_at", "last_line"),
    [
        (planned(RULE_PENDING, RULE_PENDING), [None, None, True, True], None, None, "dry run: nothing changed"),
        (planned("arn:rule/p", RULE_PENDING), ["arn:rule/p", None, False, True], None, None, "dry run"),
        (applied(planned(RULE_PENDING, RULE_PENDING)),
         [f"{PROD_L}/rule/new", f"{TEST_L}/rule/new", True, True], "arn:service-deployment/apps/app/1",
         "2026-03-01T07:30:15+00:00", "migrated: service deployment arn:service-deployment/apps/app/1 SUCCESSFUL"),
        (applied(planned("arn:rule/p", "arn:rule/t")), ["arn:rule/p", "arn:rule/t", False, False],
         "arn:service-deployment/apps/app/1", "2026-03-01T07:30:15+00:00", "migrated: "),
    ],
)
def test_migration_document_and_lines(migration: Migration, rules: list[Any], deployment: str | None,
                                      finished_at: str | None, last_line: str) -> None:
    document = migration_document(migration)
    check(document, MIGRATE_SCHEMA)
    prod, test = document["listener_rules"]
    assert [prod["use"], test["use"], prod["listener"], test["listener"]] == ["production", "test", PROD_L, TEST_L]
    assert [prod["rule"], test["rule"], prod["created"], test["created"]] == rules
    assert document["applied"] is (deployment is not None)
    assert (document["service_deployment"], document["finished_at"]) == (deployment, finished_at)
    assert (document["production_target_group"], document["alternate_target_group"]) == (BLUE, GREEN)
    assert document["next_step"].endswith("set strategy.type: ecs-native in the YAML")
    lines = migration_lines(migration)
    assert lines[-1].startswith(last_line)
    assert sum(line.startswith("created listener rule ") for line in lines) == len(migration.created)
    assert json.loads("\n".join(lines[lines.index("UpdateService for app in apps:") + 1:-1 - len(migration.created)])) \
        == migration.request
