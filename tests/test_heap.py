"""The CLI's imports run without the cyclic collector, every way out of them turns it back on, and the
program (flows.cli.run) ends after its exit handlers without tearing the interpreter down.

Each case is a fresh interpreter (the heap's state is the process's); cases that can share one do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh(code: str, *args: str) -> dict[str, object]:
    """Run CODE in a fresh interpreter at the repository root; the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_loading_blocks_hold_the_collector_then_freeze_what_they_loaded() -> None:
    seen = fresh("""
        import gc, json
        from tasks.core import heap
        try:
            with heap.loading():
                raising = gc.isenabled()
                raise SystemExit(2)  # argparse's way out of a bad argument or --help
        except SystemExit:
            pass
        after_raise = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
        with heap.loading():
            during = gc.isenabled()
            import prefect  # noqa: F401
        first = gc.get_freeze_count()
        with heap.loading():
            import flows.pipeline  # noqa: F401  (what `ecs-pipeline deploy` imports next)
        second = gc.get_freeze_count()
        heap.settle()  # the flow's own: nothing more to do
        print(json.dumps({"raising": raising, "after_raise": after_raise, "during": during,
                          "enabled": gc.isenabled(), "first": first, "grew": second > first,
                          "settle": gc.get_freeze_count() <= second, "threshold": gc.get_threshold()[0]}))
    """)
    assert seen["raising"] is False and seen["after_raise"] == {"enabled": True, "frozen": 0}
    assert seen["during"] is False and seen["enabled"] is True
    assert isinstance(seen["first"], int) and seen["first"] > 100_000  # Prefect's objects, out of the walk
    assert seen["grew"] is True and seen["settle"] is True
    assert seen["threshold"] == 10_000


def test_a_process_settled_otherwise_is_left_alone() -> None:
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


# --- the program's end: after every exit handler, no interpreter teardown --------------------------------------------

PROGRAM = """
    import atexit, gc, json, pathlib, sys
    from flows import cli
    marker, torn = sys.argv[1:3]
    atexit.register(lambda: pathlib.Path(marker).write_text("ran"))  # as Prefect's are: after the CLI's import
    pending = open(torn, "w")  # noqa: SIM115 - left open: the interpreter's teardown flushes it as it frees it
    pending.write("torn down")
    if sys.argv[3] == "--main":  # main() called by anything but the program: a test, a script
        try:
            cli.main(["deploy", "--help"])
        except SystemExit as exc:
            helped = {"code": exc.code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
        code = cli.main(["iam", "sample-app", "--role", "deploy"])
        state = {"code": code, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0}
        print(json.dumps({"help": helped, **state}))
        sys.exit(code)
    sys.argv = ["ecs-pipeline", *sys.argv[3:]]
    cli.run()
"""


def program(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    marker, torn = tmp_path / "later-handler-ran", tmp_path / "torn-down"
    for path in (marker, torn):
        path.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PROGRAM), str(marker), str(torn), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return done, marker.read_text() if marker.exists() else "", torn.read_text()


def test_the_program_ends_after_every_other_exit_handler_with_its_code_and_its_output(tmp_path: Path) -> None:
    """`ecs-pipeline` (flows.cli.run) ends the process itself once the exit handlers registered after its import
    ran (Prefect's, logging's), its standard output flushed and its exit code kept; `main()` called by anything
    else runs its command with the heap settled and ends as Python does."""
    ok, ran, torn = program(tmp_path, "iam", "sample-app", "--role", "deploy")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Statement"], "the whole policy, flushed"
    assert (ran, torn) == ("ran", ""), "a later exit handler ran; the interpreter was not torn down"
    refused, ran, torn = program(tmp_path, "iam", "no-such-service")
    assert refused.returncode == 2, refused.stderr
    assert "no-such-service" in refused.stderr
    assert (ran, torn) == ("ran", "")
    called, ran, torn = program(tmp_path, "--main")
    assert called.returncode == 0, called.stderr
    seen = json.loads(called.stdout.strip().splitlines()[-1])
    assert seen["help"] == {"code": 0, "enabled": True, "frozen": 0}  # --help leaves the collector on
    assert (seen["code"], seen["enabled"], seen["frozen"]) == (0, True, True)  # the command ran, heap settled
    assert (ran, torn) == ("ran", "torn down"), "main() called by anything but the program ends as Python does"
