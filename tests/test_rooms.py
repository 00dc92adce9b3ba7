"""The rooms' doors (tools/check_rooms.py, run by `make lint`): each rule on a table, and the tree as it is."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.check_rooms import ROOT, cycles, door_problem


@pytest.mark.parametrize(
    ("importer", "imported", "refused"),
    [
        ("tasks.release.skeleton", "tasks.core.errors", False),  # down
        ("tasks.aws.ecs", "tasks.config.taskdef", False),
        ("tasks.release.stages", "tasks.release.runs", False),  # inside a room
        ("flows.pipeline", "tasks.strategies.choose", False),
        ("tasks.strategies.codedeploy", "tasks.strategies.verification", False),  # shared verification
        ("tasks.strategies.choose", "tasks.strategies.task_sets", False),  # the table knows them all
        ("tasks.config.models", "tasks.aws.ecs", True),  # up
        ("tasks.release.skeleton", "tasks.strategies.task_sets", True),
        ("tasks.core.report", "flows.pipeline", True),
        ("tasks.triggers.changes", "tasks.strategies.rolling", True),  # side by side
        ("tasks.strategies.rolling", "tasks.triggers.contract", True),
        ("tasks.strategies.codedeploy", "tasks.strategies.task_sets", True),  # sibling strategy
        ("tasks.strategies.verification", "tasks.strategies.rolling", True),  # shared imports no strategy
        ("tasks.strategies.rolling", "tasks.strategies.choose", True),
        ("tasks.aws.clients", "sandbox.controller", True),
        ("flows.cli", "sandbox.manage", True),
        ("bench.bench_pipeline", "tests.test_pipeline", True),
        ("bench.bench_pipeline", "harness.services", False),
    ],
)
def test_a_door_opens_down_only(importer: str, imported: str, refused: bool) -> None:
    assert (door_problem(importer, imported) is not None) == refused


def test_a_circle_is_found_once_whatever_its_length() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(map(tuple, cycles(graph))) == [("a", "b", "c", "a"), ("d", "e", "d")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_tree_keeps_every_door() -> None:
    done = subprocess.run([sys.executable, "tools/check_rooms.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
