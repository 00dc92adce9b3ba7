"""The release manifest: what every service ran after a fleet or a release, to read back and go back to.

One manifest per fleet run (artifact key ``release-manifest``) and per single release (``<service>-manifest``):
per service the commit, the image by digest, the task definition revision and the strategy live after it,
with the run and the time. Prefect keeps every version of a key (the table artifact: the UI's history); the
JSON file is what is read back (``manifest --run``/``--at``, ``deploy --manifest``, drift in ``status``):

    ManifestSettings (environment, read where a manifest is written or read)
    ECS_PIPELINE_MANIFEST_BUCKET   S3 bucket for the JSON files (default: none, the local folder below)
    ECS_PIPELINE_MANIFEST_PREFIX   key prefix in that bucket (default "manifests/")
    PREFECT_LOCAL_STORAGE_PATH     Prefect's local result storage: files go to its manifests/ folder
                                   (default ~/.prefect/storage)

A file is named ``<UTC time>-<run id>.json``, so names sort by time and a run's manifest is found by name;
``latest/<service>`` beside them names each service's newest one, so ``status`` reads one pointer per service
instead of every manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.aws import ecr
from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError
from tasks.core.report import ReleaseSummary, artifact_key
from tasks.release.stages import live_release

MANIFEST_READERS = 16  # services of a fleet's manifest read at once

FLEET_KEY = "release-manifest"

# What `ecs-pipeline manifest --json` prints (the file's own form too). Same conventions as flows/operations.py.
# kind: "fleet" or "release"; image: repository@sha256:…; digest: its sha256:…; task_definition: the ARN
# with its revision; null where the service ran nothing the pipeline can name.
MANIFEST_SCHEMA: dict[str, Any] = {
    "version": "integer", "kind": "string", "run_id": ("string", None), "run_url": ("url", None),
    "created_at": "time",
    "services": [{"service": "string", "commit": ("string", None), "image": ("string", None),
                  "digest": ("string", None), "task_definition": ("string", None), "strategy": "string"}],
}


class ManifestSettings(BaseSettings):
    """Where manifests are kept (see the module's docstring)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    manifest_bucket: str | None = Field(default=None, validation_alias="ECS_PIPELINE_MANIFEST_BUCKET")
    manifest_prefix: str = Field(default="manifests/", validation_alias="ECS_PIPELINE_MANIFEST_PREFIX")
    local_storage_path: Path = Field(default=Path.home() / ".prefect" / "storage",
                                     validation_alias="PREFECT_LOCAL_STORAGE_PATH")


class ServiceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    commit: str | None
    image: str | None
    digest: str | None
    task_definition: str | None
    strategy: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    kind: Literal["fleet", "release"]
    run_id: str | None
    run_url: str | None = None
    created_at: str
    services: list[ServiceEntry]

    def entry(self, service: str) -> ServiceEntry | None:
        return next((e for e in self.services if e.service == service), None)

    def file_name(self) -> str:
        stamp = datetime.fromisoformat(self.created_at).astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{stamp}-{self.run_id or 'no-run'}.json"


# -- building one from what AWS serves ------------------------------------------------------------------------


def entry_of(cfg: ServiceConfig, clients: AwsClients) -> ServiceEntry:
    """What CFG's service runs now, as stages.live_release reads it (the commit decided by the image's digest)."""
    live = live_release(cfg, clients.for_service(cfg))
    digest = ecr.split_image(live.image)[2] if live.image else None
    return ServiceEntry(service=cfg.name, commit=live.sha, image=live.image, digest=digest,
                        task_definition=live.task_definition, strategy=cfg.strategy.type)


def deployed_entry(cfg: ServiceConfig, summary: ReleaseSummary) -> ServiceEntry | None:
    """What a release that ended Deployed put live, from its own summary (no AWS read); None when unknown."""
    if not (summary.sha and summary.image and summary.task_definition):
        return None
    return ServiceEntry(service=cfg.name, commit=summary.sha, image=summary.image,
                        digest=ecr.split_image(summary.image)[2] or None, task_definition=summary.task_definition,
                        strategy=cfg.strategy.type)


def build_manifest(configs: Sequence[ServiceConfig], clients: AwsClients, run_id: str | None,
                   run_url: str | None = None, kind: Literal["fleet", "release"] = "fleet",
                   at: datetime | None = None, known: Mapping[str, ServiceEntry] | None = None) -> Manifest:
    """A manifest of CONFIGS' services as AWS serves them now (KNOWN: services whose entry is known already)."""
    created = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    ordered = sorted(configs, key=lambda c: c.name)
    found = dict(known or {})
    unread = [cfg for cfg in ordered if cfg.name not in found]
    if len(unread) > 1:  # a fleet's services read side by side (their DescribeServices shared, tasks/aws/shared_reads)
        with ThreadPoolExecutor(max_workers=min(MANIFEST_READERS, len(unread))) as pool:  # each in the run's context
            reads = [pool.submit(copy_context().run, entry_of, cfg, clients) for cfg in unread]
            found.update((cfg.name, read.result()) for cfg, read in zip(unread, reads, strict=True))
    elif unread:
        found[unread[0].name] = entry_of(unread[0], clients)
    entries = [found[cfg.name] for cfg in ordered]
    return Manifest(kind=kind, run_id=run_id, run_url=run_url, created_at=created, services=entries)


def short_revision(task_definition: str | None) -> str:
    return task_definition.rsplit("/", 1)[-1] if task_definition else "none"


def manifest_rows(manifest: Manifest) -> list[dict[str, str]]:
    """The table artifact's rows (and the CLI table's)."""
    return [{"service": e.service, "commit": (e.commit or "unknown")[:12], "digest": (e.digest or "none")[:19],
             "task definition": short_revision(e.task_definition), "strategy": e.strategy}
            for e in manifest.services]


def parse_manifest(text: str, source: str) -> Manifest:
    """A manifest from its JSON; a ConfigError naming SOURCE and the field when it is not one."""
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source} is not a release manifest ({where}); "
                          "`ecs-pipeline manifest --json` prints one") from None


# -- where they are kept --------------------------------------------------------------------------------------


class ManifestStore:
    """The JSON files: a local folder, or an S3 bucket and prefix."""

    def __init__(self, settings: ManifestSettings | None = None, s3: Any = None) -> None:
        self.settings = settings or ManifestSettings()
        self.s3 = s3
        if self.settings.manifest_bucket and s3 is None:
            raise ConfigError("ECS_PIPELINE_MANIFEST_BUCKET is set: the store needs an S3 client")

    @classmethod
    def from_clients(cls, clients: AwsClients) -> ManifestStore:
        """The worker's own S3 client (not a service's deploy role) when a bucket is set."""
        settings = ManifestSettings()
        return cls(settings, AwsClients(clients.settings).get("s3") if settings.manifest_bucket else None)

    @property
    def folder(self) -> Path:
        return self.settings.local_storage_path / "manifests"

    def where(self) -> str:
        if self.settings.manifest_bucket:
            return f"s3://{self.settings.manifest_bucket}/{self.settings.manifest_prefix}"
        return str(self.folder)

    def _put(self, name: str, body: str) -> str:
        """NAME (a path under the folder or prefix) holds BODY; where it went."""
        if self.settings.manifest_bucket:
            key = self.settings.manifest_prefix + name
            self.s3.put_object(Bucket=self.settings.manifest_bucket, Key=key, Body=body.encode(),
                               ContentType="application/json")
            return f"s3://{self.settings.manifest_bucket}/{key}"
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body)
        tmp.replace(path)  # a reader never sees half a file
        return str(path)

    def _get(self, name: str) -> tuple[str, str] | None:
        """(where, text) of NAME; None when there is none."""
        if self.settings.manifest_bucket:
            key = self.settings.manifest_prefix + name
            try:
                body = self.s3.get_object(Bucket=self.settings.manifest_bucket, Key=key)["Body"].read().decode()
            except self.s3.exceptions.NoSuchKey:
                return None
            return f"s3://{self.settings.manifest_bucket}/{key}", body
        path = self.folder / name
        return (str(path), path.read_text()) if path.is_file() else None

    def write(self, manifest: Manifest) -> str:
        """The manifest's file, then each service's pointer to its newest manifest (what status reads)."""
        name = manifest.file_name()
        where = self._put(name, manifest.model_dump_json(indent=2))
        for e in manifest.services:
            pointer = f"latest/{e.service}"
            current = self._get(pointer)
            if current is None or current[1].strip() < name:  # names sort by time: never back to an older one
                self._put(pointer, name)
        return where

    def names(self) -> list[str]:
        """Every manifest's file name, oldest first."""
        if self.settings.manifest_bucket:
            found: list[str] = []
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.manifest_bucket, Prefix=self.settings.manifest_prefix)
            for page in pages:
                found += [o["Key"].removeprefix(self.settings.manifest_prefix) for o in page.get("Contents", [])]
            return sorted(n for n in found if n.endswith(".json") and "/" not in n)
        return sorted(p.name for p in self.folder.glob("*.json")) if self.folder.is_dir() else []

    def read(self, name: str) -> Manifest:
        found = self._get(name)
        if found is None:
            raise ConfigError(f"no release manifest {name} in {self.where()}")
        return parse_manifest(found[1], found[0])

    def by_run(self, run_id: str) -> Manifest:
        found = [n for n in self.names() if n.removesuffix(".json").split("-", 1)[-1] == run_id]
        if not found:
            raise ConfigError(f"no release manifest of run {run_id} in {self.where()}")
        return self.read(found[-1])

    def at(self, when: datetime | None = None) -> Manifest:
        """The newest manifest written at or before WHEN (default: now)."""
        for name in reversed(self.names()):
            if when is None or stamp_of(name) <= when:
                return self.read(name)
        since = f" at or before {when.isoformat()}" if when else ""
        raise ConfigError(f"no release manifest{since} in {self.where()}")

    def newest_by_service(self, services: Iterable[str]) -> dict[str, tuple[Manifest, ServiceEntry]]:
        """Each of SERVICES' newest manifest entry, by its pointer (services never in a manifest are left out)."""
        found: dict[str, tuple[Manifest, ServiceEntry]] = {}
        read: dict[str, Manifest] = {}
        for service in services:
            pointer = self._get(f"latest/{service}")
            if pointer is None:
                continue
            name = pointer[1].strip()
            manifest = read[name] if name in read else read.setdefault(name, self.read(name))
            entry = manifest.entry(service)
            if entry is not None:
                found[service] = (manifest, entry)
        return found


def stamp_of(name: str) -> datetime:
    return datetime.strptime(name[:23], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """--at: ISO-8601; without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {text!r} is not an ISO-8601 time (e.g. 2026-12-06T17:30:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def load_manifest(ref: str, store: ManifestStore) -> Manifest:
    """``deploy --manifest REF``: a JSON file when REF names one, else a run id."""
    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--manifest {ref}: no such file")
        return parse_manifest(path.read_text(), str(path))
    return store.by_run(ref)


# -- writing: file and table artifact, best-effort after a release ---------------------------------------------


def publish_manifest(manifest: Manifest, store: ManifestStore, key: str) -> str:
    """The JSON file, then the table artifact (KEY) whose description says where the file is.

    Made through the client, so it is the current run's when there is one and still made outside a run
    (a fleet's end, a restore from the CLI).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.runtime import flow_run, task_run

    where = store.write(manifest)
    named = f"run {manifest.run_id}" if manifest.run_id else "no run"
    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(
            key=key, type="table", data=json.dumps(manifest_rows(manifest)),
            description=f"Release manifest of {named} at {manifest.created_at}: {where}",
            flow_run_id=UUID(run) if (run := flow_run.get_id()) else None,
            task_run_id=UUID(task) if (task := task_run.get_id()) else None))
    return where


def record_manifest(configs: Sequence[ServiceConfig], clients: AwsClients, run_id: str | None,
                    run_url: str | None = None, kind: Literal["fleet", "release"] = "fleet",
                    known: Mapping[str, ServiceEntry] | None = None) -> Manifest | None:
    """Build and publish a manifest; a failure is a warning, never the release's outcome."""
    from prefect.logging import get_logger

    log = get_logger("ecs-pipeline.manifest")
    if run_id and run_url is None:
        run_url = ui_url(run_id)
    try:
        manifest = build_manifest(configs, clients, run_id, run_url, kind, known=known)
        store = ManifestStore.from_clients(clients)
        key = FLEET_KEY if kind == "fleet" else artifact_key(configs[0].name, "manifest")
        log.info("release manifest written: %s", publish_manifest(manifest, store, key))
        return manifest
    except Exception as exc:  # noqa: BLE001 - the release is over; only its record failed
        log.warning("release manifest not written (%s: %s); the release's outcome stands", type(exc).__name__, exc)
        return None


def ui_url(run_id: str) -> str | None:
    """A flow run's page in the Prefect UI (PREFECT_UI_URL); None for an id that names no flow run."""
    from prefect.settings import PREFECT_UI_URL

    try:
        UUID(run_id)
    except ValueError:
        return None
    ui = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{ui}/runs/flow-run/{run_id}" if ui else None


def record_release_manifest(cfg: ServiceConfig, clients: AwsClients, run_id: str | None,
                            run_url: str | None = None, served: ServiceEntry | None = None) -> Manifest | None:
    """After a single release (Deployed or Rolled back): the service's ``<service>-manifest``. Best-effort.

    SERVED: what the release put live, when it knows (Deployed): no AWS read for it.
    """
    return record_manifest([cfg], clients, run_id, run_url, kind="release",
                           known={cfg.name: served} if served else None)


def record_fleet_manifest(configs: Sequence[ServiceConfig], clients: AwsClients, run_id: str | None,
                          run_url: str | None = None) -> Manifest | None:
    """After a fleet run, whatever its outcome: every service of the fleet in ``release-manifest``. Best-effort."""
    return record_manifest(configs, clients, run_id, run_url, kind="fleet")
