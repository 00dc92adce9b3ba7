"""What a failed build's summary and test report say, as pure functions: the failing test first, text cut at
a word (never inside one) with a pointer to the rest, no table cell longer than a line, real test times."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.build.buildspec_runner import BuildRun, failed_tests
from tasks.build.junit import MESSAGE_WIDTH, NO_TIME, read_report, read_seconds
from tasks.core.report import REASON_CELL, ReleaseSummary, junit_artifact_key, shorten

SAMPLE_APP = Path(__file__).resolve().parents[1] / "examples" / "sample-app"
# The sample app's build with BROKEN=root, as its pre_build fails in a release (last output of its phase).
BUILD_FAILURE = (
    "1 of 5 tests failed: sample-app.root_answers_200 (GET / answers 500 Internal Server Error); "
    "test report: artifact sample-app-tests\n"
    "buildspec failed in phase pre_build: command `sh tests/run.sh reports/junit.xml` exited 1; last output:\n"
    "  | PASS version_is_set\n  | PASS broken_mode_is_known\n  | PASS health_answers_ok\n"
    "  | PASS health_is_served\n  | FAIL root_answers_200: GET / answers 500 Internal Server Error\n"
    "  | 4 passed, 1 failed"
)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 50, "short"),
        ("one line\nand another", 50, "one line … (more)"),
        ("the health check of green failed", 20, "the health check of … (more)"),
        ("the health check of green failed", 19, "the health check of … (more)"),  # the word ends at the limit
        ("the health check of green failed", 18, "the health check … (more)"),
        ("GET / answered 500; then the rollback failed: x", 30, "GET / answered 500 … (more)"),
        ("a" * 40, 10, "a" * 10 + " … (more)"),  # no word boundary at all: cut at the limit
        ("spaced   out\ttext", 50, "spaced out text"),
    ],
)
def test_shorten_cuts_at_a_clause_or_a_word_and_says_where_the_rest_is(text: str, limit: int, expected: str) -> None:
    assert shorten(text, limit, "(more)") == expected


@pytest.mark.parametrize(
    ("service", "group", "taken", "key"),
    [
        ("sample-app", "sample-app-tests", (), "sample-app-tests"),  # the sample app's group: not its name twice
        ("sample-app", "tests", (), "sample-app-tests"),
        ("sample-app", "unit", (), "sample-app-tests-unit"),
        ("sample-app", "unit tests", (), "sample-app-tests-unit"),
        ("sample-app", "Integration_Test", (), "sample-app-tests-integration"),
        ("sample-app", "sample-app-b-tests", (), "sample-app-tests-b"),  # never reads as service sample-app-b's
        ("web", "sample-app-tests", (), "web-tests-sample-app"),
        ("web", "unit-tests", ("web-tests-unit",), "web-tests-unit-2"),  # two groups, two keys
        ("web", "unit", ("web-tests-unit", "web-tests-unit-2"), "web-tests-unit-3"),
    ],
)
def test_a_test_report_has_one_key_without_the_service_twice(
    service: str, group: str, taken: tuple[str, ...], key: str
) -> None:
    assert junit_artifact_key(service, group, taken) == key


@pytest.mark.parametrize(
    ("attribute", "seconds"),
    [("0.25", 0.25), ("1,234.5", 1234.5), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-1", None),
     ("nan", None), ("inf", None)],
)
def test_a_testcase_time_is_its_time_attribute_or_not_reported(attribute: str | None, seconds: float | None) -> None:
    assert read_seconds(attribute) == seconds


def test_the_report_table_puts_failures_first_with_real_times_and_wraps_long_messages(tmp_path: Path) -> None:
    long = " ".join(["expected 200 from GET / but the body said"] * 5)
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite name="s"><testcase classname="a" name="ok" time="0.0125"/>'
        f'<testcase classname="a" name="slow" time="2"><failure message="{long}"/></testcase>'
        '<testcase classname="a" name="bad"><error message="boom"/></testcase>'
        '<testcase name="later"><skipped/></testcase></testsuite></testsuites>')
    report = read_report("unit", [tmp_path / "junit.xml"])
    rows = report.rows()
    named = [(r["status"], r["test"], r["time"]) for r in rows if r["test"]]
    assert named == [("failed", "a.slow", "2.000 s"), ("error", "a.bad", NO_TIME), ("skipped", "s.later", NO_TIME),
                     ("passed", "a.ok", "0.013 s")]
    assert list(rows[0]) == ["status", "test", "time", "message"], "the status leads: a failure shows first"
    slow = [r["message"] for r in rows[:rows.index(next(r for r in rows if r["test"] == "a.bad"))]]
    assert len(slow) > 1 and all(len(line) <= MESSAGE_WIDTH for line in slow), "continued in rows of its own"
    assert " ".join(slow) == long, "nothing lost and no word cut"
    assert report.lead() == f"2 of 4 tests failed: a.slow ({long}); a.bad (boom)"


def test_a_lead_names_three_failing_tests_and_counts_the_rest(tmp_path: Path) -> None:
    cases = "".join(f'<testcase name="t{i}"><failure/></testcase>' for i in range(5))
    (tmp_path / "j.xml").write_text(f'<testsuite name="s">{cases}<testcase name="ok"/></testsuite>')
    assert read_report("g", [tmp_path / "j.xml"]).lead() == "5 of 6 tests failed: s.t0; s.t1; s.t2 and 2 more"


def test_the_sample_apps_failing_test_leads_its_report_and_its_times_are_not_reported(tmp_path: Path) -> None:
    """The sample app's own tests/run.sh, as its buildspec runs it: its JUnit file has no times."""
    app = tmp_path / "app"
    shutil.copytree(SAMPLE_APP, app)
    (app / "app.env").write_text("VERSION=v3\nBROKEN=root\n")
    ran = subprocess.run(["sh", "tests/run.sh", "reports/junit.xml"], cwd=app, capture_output=True, text=True,
                         timeout=30, check=False)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    report = read_report("sample-app-tests", [app / "reports" / "junit.xml"])
    assert report.rows()[0] == {"status": "failed", "test": "sample-app.root_answers_200", "time": NO_TIME,
                                "message": "GET / answers 500 Internal Server Error"}
    assert {r["time"] for r in report.rows()} == {NO_TIME}, "no 0.000 s that nobody measured"
    result = BuildRun(reports=[report], report_keys={"sample-app-tests": "sample-app-tests"})
    assert failed_tests(result) == [BUILD_FAILURE.splitlines()[0]]


def test_a_failed_builds_summary_shows_the_failing_test_first_and_never_cuts_a_word() -> None:
    summary = ReleaseSummary("sample-app", "task-sets", sha="3356bf2" + "0" * 33, outcome="Failed",
                             reason=BUILD_FAILURE)
    description = summary.description()
    assert description == (
        "sample-app@3356bf2: Failed: 1 of 5 tests failed: sample-app.root_answers_200 (GET / answers 500 Internal "
        "Server Error); test report: artifact sample-app-tests … (full reason in the summary)")
    text = summary.markdown()
    cell = next(line for line in text.splitlines() if line.startswith("| Reason |"))
    assert cell == ("| Reason | 1 of 5 tests failed: sample-app.root_answers_200 (GET / answers 500 Internal Server "
                    "Error) … (reason below) |")
    assert len(cell) < REASON_CELL + 30, "a table cell is one line in the UI: it holds no build output"
    below = text.split("**Reason**", 1)[1].split("| stage |", 1)[0]
    assert "- \\| FAIL root_answers_200: GET / answers 500 Internal Server Error" in below
    assert below.index("1 of 5 tests failed") < below.index("PASS version_is_set"), "the failure before the log"


@pytest.mark.parametrize("reason", ["GET / returned 500 on 3 of 3 checks", "x" * REASON_CELL])
def test_a_short_reason_stays_in_its_cell_alone(reason: str) -> None:
    text = ReleaseSummary("web", "rolling", outcome="Rolled back", reason=reason).markdown()
    assert f"| Reason | {reason} |" in text and "**Reason**" not in text
