"""The CLI's imports run without the cyclic collector, and every way out of them turns it back on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh(code: str, *env_args: str) -> dict[str, object]:
    """Run CODE in a fresh interpreter at the repository root; the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *env_args], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_loading_holds_the_collector_then_settles_the_heap() -> None:
    seen = fresh("""
        import gc, json
        from tasks.core import heap
        with heap.loading():
            during = gc.isenabled()
            import prefect  # noqa: F401
        print(json.dumps({"during": during, "after": gc.isenabled(), "frozen": gc.get_freeze_count(),
                          "threshold": gc.get_threshold()[0]}))
    """)
    assert seen["during"] is False
    assert seen["after"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 100_000  # Prefect's objects, out of the walk
    assert seen["threshold"] == 10_000


def test_a_block_that_raises_leaves_the_collector_on_and_the_heap_unsettled() -> None:
    seen = fresh("""
        import gc, json
        from tasks.core import heap
        try:
            with heap.loading():
                raise SystemExit(2)  # argparse's way out of a bad argument or --help
        except SystemExit:
            pass
        with heap.loading():  # not settled: a later block may still settle
            during = gc.isenabled()
        print(json.dumps({"during": during, "after": gc.isenabled(), "frozen": gc.get_freeze_count() > 0}))
    """)
    assert seen == {"during": False, "after": True, "frozen": True}


def test_a_second_block_freezes_what_it_loaded_and_a_settled_process_is_left_alone() -> None:
    seen = fresh("""
        import gc, json
        from tasks.core import heap
        with heap.loading():
            import prefect  # noqa: F401
        first = gc.get_freeze_count()
        with heap.loading():
            during = gc.isenabled()
            import flows.pipeline  # noqa: F401  (what `ecs-pipeline deploy` imports next)
        second = gc.get_freeze_count()
        heap.settle()  # the flow's own: nothing more to do
        print(json.dumps({"during": during, "grew": second > first, "settle": gc.get_freeze_count() <= second}))
    """)
    assert seen == {"during": False, "grew": True, "settle": True}
    left = fresh("""
        import gc, json
        from tasks.core import heap
        heap.settle()  # a worker's flow or a test session settled first
        frozen = gc.get_freeze_count()
        with heap.loading():
            during = gc.isenabled()
            import prefect  # noqa: F401
        print(json.dumps({"during": during, "same": gc.get_freeze_count() <= frozen}))  # nothing frozen
    """)
    assert left == {"during": True, "same": True}


def test_the_cli_runs_its_command_with_the_collector_on_and_the_heap_settled() -> None:
    """`ecs-pipeline iam` is offline: main's imports, then the command, then the process's state."""
    seen = fresh("""
        import contextlib, gc, io, json, sys
        from flows import cli
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["iam", "sample-app", "--role", "deploy"])
        print(json.dumps({"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0}))
    """)
    assert seen == {"code": 0, "enabled": True, "frozen": True}


def test_help_leaves_the_collector_on() -> None:
    seen = fresh("""
        import contextlib, gc, io, json
        from flows import cli
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["deploy", "--help"])
        except SystemExit as exc:
            code = exc.code
        print(json.dumps({"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
    """)
    assert seen == {"code": 0, "enabled": True, "frozen": 0}


# --- the program's end: after every exit handler, no interpreter teardown --------------------------------------------


def test_the_program_ends_after_every_other_exit_handler_with_its_code_and_its_output(tmp_path: Path) -> None:
    """`ecs-pipeline` (flows.cli.run) ends the process itself once the exit handlers registered after its import
    ran (Prefect's, logging's), its standard output flushed and its exit code kept."""
    marker, torn = tmp_path / "later-handler-ran", tmp_path / "torn-down"
    code = textwrap.dedent(f"""
        import atexit, pathlib, sys
        from flows import cli
        atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text("ran"))  # as Prefect's are: later

        pending = open({str(torn)!r}, "w")  # noqa: SIM115 - left open: the teardown flushes it as it frees it
        pending.write("torn down")
        sys.argv = ["ecs-pipeline", *sys.argv[1:]]
        cli.run() if sys.argv[1] != "--main" else sys.exit(cli.main(sys.argv[2:]))
    """)
    ok = subprocess.run([sys.executable, "-c", code, "iam", "sample-app", "--role", "deploy"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Statement"], "the whole policy, flushed"
    assert marker.read_text() == "ran"
    assert torn.read_text() == "", "the interpreter was torn down"
    marker.unlink()
    refused = subprocess.run([sys.executable, "-c", code, "iam", "no-such-service"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "no-such-service" in refused.stderr
    assert marker.read_text() == "ran" and torn.read_text() == ""
    called = subprocess.run([sys.executable, "-c", code, "--main", "iam", "sample-app", "--role", "deploy"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert called.returncode == 0, called.stderr
    assert torn.read_text() == "torn down", "main() called by anything but the program ends as Python does"
