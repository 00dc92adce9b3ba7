"""CodePipeline's hand-over files, so a pipeline that keeps its deploy action can use our build.

``imagedefinitions.json`` is what CodePipeline's "Amazon ECS" (rolling) deploy
action reads; ``imageDetail.json`` is what its "Amazon ECS (Blue/Green)" action
reads to fill ``<IMAGE1_NAME>`` in taskdef.json. Both are written exactly in
CodePipeline's formats, as files (``<artifacts>/<service>/``) and as Prefect
artifacts (``<service>-imagedefinitions``, ``<service>-imagedetail``).

They always name the image that serves production, since a tool that reads
them deploys what they name: a release writes them once production is on its
image and verified, never at build time; a rollback puts them back on the
image production went back to; a failed release leaves them as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

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


def _markdown(name: str, content: Any) -> str:
    return f"`{name}`, for CodePipeline's ECS deploy actions:\n\n```json\n{json.dumps(content)}\n```\n"


@task(name="hand-over files", task_run_name="hand-over files {cfg.name}", cache_policy=NO_CACHE)
def write_interop_files(cfg: ServiceConfig, image: str, artifacts_dir: Path) -> list[str]:
    """Write imagedefinitions.json and imageDetail.json for ``image``, the live one; returns the file paths."""
    out = artifacts_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in interop_files(cfg.ecs.container, image).items():
        path = out / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(content))
        tmp.replace(path)  # a reader never sees half a file
        kind = name.removesuffix(".json").lower()
        create_markdown_artifact(
            key=artifact_key(cfg.name, kind),
            markdown=_markdown(name, content),
            description=f"{cfg.name}: {name}",
        )
        written.append(str(path))
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
