"""Attack: a build prints markdown and HTML that the Prefect UI would render for the operator.

The build's last lines become the failed release's reason, which the release
summary and the ``<service>-live`` artifact show as markdown. An image link
there would make every operator's browser call the attacker's server; HTML or a
comment closer would rewrite the page (and the live record kept in it). The
output must arrive as plain text, and the live record must still read back.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.pipeline import deploy_service
from harness.services import ServiceUnderTest
from tasks.core.report import artifact_key
from tasks.release.live_view import parse_record
from tests.test_buildspec_release import with_buildspec

HOSTILE = ("![beacon](http://attacker.example/pixel.png) [click](javascript:alert(1)) "
           "<img src=x onerror=alert(1)> | a | table | --> <!-- ")


def latest(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    return str(found[0].data) if found else ""


def test_build_output_reaches_the_ui_as_plain_text(new_service: Callable[..., ServiceUnderTest]) -> None:
    sut = new_service(strategy="rolling")
    with_buildspec(sut, {"version": 0.2, "phases": {"pre_build": {"commands": [f"echo '{HOSTILE}'; exit 3"]}}})
    failed = deploy_service(sut.name, sha=sut.commit("v2"), return_state=True)
    assert failed.is_failed() and "attacker.example" in (failed.message or ""), failed.message

    for markdown in (latest(artifact_key(sut.name, "release")), latest(artifact_key(sut.name, "live"))):
        assert markdown, "the artifact was published"
        visible = markdown.split("<!-- ecs-pipeline-live ", 1)[0]
        assert "attacker.example" in visible
        for raw in ("![beacon]", "[click](", "<img", "<!--", "| a | table |"):
            unescaped = re.search(r"(?<!\\)" + re.escape(raw), visible)
            assert unescaped is None, f"{raw!r} would render: {visible}"
        assert "\\[beacon\\]" in visible and "\\<img" in visible
    record = parse_record(latest(artifact_key(sut.name, "live")))
    assert record is not None and record.last_failure is not None
    assert HOSTILE.strip() in " ".join(record.last_failure.reason.split()), "the record reads back whole"
