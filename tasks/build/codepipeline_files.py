"""CodePipeline's hand-over files, so a pipeline that keeps its deploy action can use our build.

``imagedefinitions.json`` is what CodePipeline's "Amazon ECS" (rolling) deploy
action reads; ``imageDetail.json`` is what its "Amazon ECS (Blue/Green)" action
reads to fill ``<IMAGE1_NAME>`` in taskdef.json. Both are written exactly in
CodePipeline's formats, as files (``<artifacts>/<service>/``) and as one Prefect
artifact holding both (``<service>-handover``).

They always name the image that serves production, since a tool that reads
them deploys what they name: a release writes them once production is on its
image and verified, never at build time; a rollback puts them back on the
image production went back to; a failed release leaves them as they were.

Writing them is a step of the release's run, not a task of its own: two small
files and one artifact are not a stage anyone retries, and a task run costs the
Prefect server three state events per release.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.config.models import ServiceConfig
from tasks.core.report import artifact_key

IMAGE_DEFINITIONS = "imagedefinitions.json"
IMAGE_DETAIL = "imageDetail.json"


def image_definitions(container: str, image: str) -> list[dict[str, str]]:
    """CodePipeline's ECS standard deploy input: one entry per container to update."""
    return [{"name": container, "imageUri": image}]


def image_detail(image: str) -> dict[str, str]:
    """CodePipeline's ECS blue/green deploy input (the image for <IMAGE1_NAME>)."""
    return {"ImageURI": image}


def interop_files(container: str, image: str) -> dict[str, Any]:
    """File name → content, for one release's image."""
    return {IMAGE_DEFINITIONS: image_definitions(container, image), IMAGE_DETAIL: image_detail(image)}


def _markdown(files: dict[str, Any]) -> str:
    parts = [f"`{name}`:\n\n```json\n{json.dumps(content)}\n```\n" for name, content in files.items()]
    return "For CodePipeline's ECS deploy actions, naming the image production serves.\n\n" + "\n".join(parts)


def write_interop_files(cfg: ServiceConfig, image: str, artifacts_dir: Path) -> list[str]:
    """Write imagedefinitions.json and imageDetail.json for ``image``, the live one; returns the file paths."""
    out = artifacts_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    files = interop_files(cfg.ecs.container, image)
    written = []
    for name, content in files.items():
        path = out / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(content))
        tmp.replace(path)  # a reader never sees half a file
        written.append(str(path))
    create_markdown_artifact(key=artifact_key(cfg.name, "handover"), markdown=_markdown(files),
                             description=f"{cfg.name}: {', '.join(files)}")
    get_run_logger().info("hand-over files name the live image %s: %s", image, ", ".join(written))
    return written


def hand_over_live(cfg: ServiceConfig, image: str | None, artifacts_dir: Path) -> None:
    """The hand-over files name IMAGE, which production now serves (None: nothing known serves: left as they are).

    Files about a release never decide its outcome: a write that fails is a warning.
    """
    if not image:
        return
    try:
        write_interop_files(cfg, image, artifacts_dir)
    except Exception as exc:  # noqa: BLE001 - production already is where it is; the files follow it
        get_run_logger().warning(
            "hand-over files of %s not written (they may name another image than %s): %s", cfg.name, image, exc
        )
