"""The migration gate: a one-off task of the NEW revision, after green is up and before production moves.

    check     as the release starts, no AWS call: the container exists in the task definition template
              and logs with awslogs (its lines must come back into the run's log)
    find      a task this revision's migration started earlier (``startedBy``): one still running is
              followed instead of starting a second; one that exited 0 means the migration is done
    run       RunTask of the new task definition, the command in ``containerOverrides``, on the
              service's cluster with the network and launch settings its tasks get (``run_task_placement``)
    wait      DescribeTasks with backoff until STOPPED, the container's log lines (GetLogEvents) copied
              into the run's log as they come
    judge     the container's exit code 0 passes; anything else (non-zero, a task that never started,
              one stopped by someone) fails the stage, and the release rolls back: production never moved
    timeout   ``migrate.timeout_seconds`` (time-scaled in a rehearsal): StopTask, then fail the same way

A rerun finds the migration done only while ECS still lists the stopped task: DescribeTasks documents
"stopped tasks appear in the returned results for at least one hour". After that it runs again, which is
why a migration must be safe to run twice (docs/failure-model.md).
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run

from tasks.aws import ecs as ecs_ops
from tasks.aws.clients import AwsClients
from tasks.aws.retry import stage
from tasks.config.models import ServiceConfig
from tasks.config.taskdef import container_named, load_template
from tasks.core.errors import ConfigError, DeployError, VerifyFailed
from tasks.core.waits import abort_when, poll

STARTED_BY_PREFIX = "ecs-pipeline-migrate/"
LAST_LINES = 5  # log lines a failure's reason quotes
STOP_WAIT = 120.0  # seconds a stopped (timed-out) migration may take to reach STOPPED
LOG_SETTLE = 1.0  # seconds the log driver gets after STOPPED to deliver the last lines


@dataclass(frozen=True)
class LogSource:
    """Where the awslogs driver puts the migration container's output (``prefix/container/task-id``)."""

    group: str
    prefix: str
    container: str

    def stream(self, task_arn: str) -> str:
        return f"{self.prefix}/{self.container}/{task_arn.rsplit('/', 1)[-1]}"


def container_of(cfg: ServiceConfig) -> str:
    assert cfg.migrate is not None
    return cfg.migrate.container or cfg.ecs.container


def command_words(cfg: ServiceConfig) -> str:
    assert cfg.migrate is not None
    return shlex.join(cfg.migrate.command)


def log_source(td: dict[str, Any], container: str, source: str) -> LogSource:
    """The awslogs group and stream prefix of CONTAINER in TD; a ConfigError naming the fix when it has none."""
    found = container_named(td, container, source)
    logging = found.get("logConfiguration") or {}
    options = logging.get("options") or {}
    group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
    if logging.get("logDriver") != "awslogs" or not group or not prefix:
        raise ConfigError(
            f"{source}: container {container!r} runs the migration (migrate:), whose output comes back into "
            "the release's log from CloudWatch Logs, but it has no awslogs logConfiguration with "
            "awslogs-group and awslogs-stream-prefix. Add to that container: \"logConfiguration\": "
            "{\"logDriver\": \"awslogs\", \"options\": {\"awslogs-group\": \"/ecs/<service>\", "
            "\"awslogs-region\": \"<AWS_REGION>\", \"awslogs-stream-prefix\": \"<container>\"}}"
        )
    return LogSource(str(group), str(prefix), container)


def check_migration(cfg: ServiceConfig) -> None:
    """Before any AWS call: a configured migration can run and be read (its container, its awslogs)."""
    if cfg.migrate is None:
        return
    path = cfg.path(cfg.task_definition)
    log_source(load_template(path), container_of(cfg), f"{path} (task_definition)")


def started_by(task_definition: str) -> str:
    """RunTask's startedBy for one revision's migration (ECS allows 128 characters): how a rerun finds it."""
    revision = task_definition.rsplit("/", 1)[-1]
    family, _, number = revision.rpartition(":")
    short = family if len(family) <= 80 else family[:60] + hashlib.sha256(family.encode()).hexdigest()[:12]
    return f"{STARTED_BY_PREFIX}{short}-{number}"


def client_token(run_id: str, task_definition: str) -> str:
    """RunTask's idempotency token for this run and revision: a lost answer retried starts no second task."""
    return "ecsp-migrate-" + hashlib.sha256(f"{run_id}|{task_definition}".encode()).hexdigest()[:40]


def exit_code(task: dict[str, Any], container: str) -> int | None:
    for c in task.get("containers") or []:
        if c.get("name") == container:
            code = c.get("exitCode")
            return int(code) if code is not None else None
    return None


def task_id(task: dict[str, Any]) -> str:
    return str(task.get("taskArn", "")).rsplit("/", 1)[-1]


@dataclass
class Watch:
    """One migration task being followed: its log lines so far and where GetLogEvents goes on from."""

    task_arn: str
    logs: LogSource
    token: str | None = None
    lines: list[str] = field(default_factory=list)

    def read(self, clients: AwsClients, say: Callable[[str], None]) -> None:
        new, self.token = ecs_ops.read_log_events(clients.get("logs"), self.logs.group,
                                                  self.logs.stream(self.task_arn), self.token)
        for line in new:
            say(f"migration | {line}")
        self.lines += new


def verdict(cfg: ServiceConfig, task: dict[str, Any], lines: list[str], timed_out: float | None = None) -> str | None:
    """None when the migration passed (its container exited 0), else the reason the release rolls back.

    TIMED_OUT: the seconds it ran before it was stopped for its timeout (time-scaled in a rehearsal)."""
    container = container_of(cfg)
    code = exit_code(task, container)
    if code == 0 and timed_out is None:
        return None
    last = " / ".join(line.strip()[:200] for line in lines[-LAST_LINES:] if line.strip())
    tail = f"; last lines: {last}" if last else "; it wrote no log lines"
    ecs_words = str(task.get("stoppedReason") or "")
    where = f"task {task_id(task)}"
    if timed_out is not None:
        assert cfg.migrate is not None
        return (f"migration `{command_words(cfg)}` timed out after {cfg.migrate.timeout_seconds}s "
                f"(migrate.timeout_seconds) and was stopped ({where}){tail}")
    if code is None:
        return f"migration `{command_words(cfg)}` did not run to an exit code: {ecs_words or 'stopped'} ({where}){tail}"
    said = f", ECS: {ecs_words}" if ecs_words and task.get("stopCode") != "EssentialContainerExited" else ""
    return f"migration `{command_words(cfg)}` exited with code {code} ({where}{said}){tail}"


def earlier_runs(ecs: Any, cluster: str, task_definition: str,
                 container: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(a task of this revision's migration that exited 0, one still running), as far as ECS still lists them."""
    mine = [t for t in ecs_ops.one_off_tasks(ecs, cluster, started_by(task_definition))
            if t.get("taskDefinitionArn") == task_definition]
    done = [t for t in mine if t.get("lastStatus") == "STOPPED" and exit_code(t, container) == 0]
    running = [t for t in mine if t.get("lastStatus") != "STOPPED"]
    return (done[0] if done else None), (running[0] if running else None)


@stage("migrate", "migrate {cfg.name}@{sha:.7}")
def migrate(cfg: ServiceConfig, clients: AwsClients, task_definition: str, sha: str) -> str:
    """Run the migration to its end (or find it done); the line for the summary. VerifyFailed when it failed."""
    assert cfg.migrate is not None
    log = get_run_logger()
    ecs = clients.get("ecs")
    td = ecs_ops.describe_revision(ecs, task_definition)
    if td is None:
        raise DeployError(f"task definition {task_definition} is gone before its migration ran", service=cfg.name)
    source = log_source(td, container_of(cfg), f"task definition {task_definition.rsplit('/', 1)[-1]}")
    tag = started_by(task_definition)
    done, running = earlier_runs(ecs, cfg.ecs.cluster, task_definition, source.container)
    if done is not None:
        words = (f"migration already succeeded for {task_definition.rsplit('/', 1)[-1]} (task {task_id(done)}, "
                 "exit code 0): not run again")
        log.info("%s", words)
        return words
    if running is not None:
        task = running
        log.info("migration task %s of an earlier run is still running: following it", task_id(task))
    else:
        service = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
        placement = ecs_ops.run_task_placement(cfg.network.as_aws() if cfg.network else None,
                                               [i.as_aws() for i in cfg.ecs.capacity_provider_strategy], service)
        if "networkConfiguration" not in placement and td.get("networkMode") == "awsvpc":
            raise ConfigError(
                f"network: the migration of {cfg.name} runs {task_definition.rsplit('/', 1)[-1]} (networkMode awsvpc), "
                f"which needs subnets, and neither the service YAML nor service {cfg.ecs.service} names any. Add "
                "network: {subnets: [subnet-...], security_groups: [sg-...]} to the service YAML", service=cfg.name)
        spec = ecs_ops.OneOffTask(cfg.ecs.cluster, task_definition, source.container, tuple(cfg.migrate.command),
                                  tag, placement, client_token(str(flow_run.get_id() or sha), task_definition))
        task = ecs_ops.run_one_off_task(ecs, spec)
        log.info("migration task %s started: `%s` in container %s of %s", task_id(task), command_words(cfg),
                 source.container, task_definition.rsplit("/", 1)[-1])
    return follow(cfg, clients, Watch(str(task["taskArn"]), source))


def follow(cfg: ServiceConfig, clients: AwsClients, watch: Watch) -> str:
    """Until the task stops (its lines copied into the run's log); StopTask when it outlasts its timeout."""
    assert cfg.migrate is not None
    log = get_run_logger()
    ecs, cluster = clients.get("ecs"), cfg.ecs.cluster
    timeout = clients.settings.scaled(cfg.migrate.timeout_seconds)
    started = time.monotonic()

    def stopped() -> dict[str, Any] | None:
        task = ecs_ops.describe_one_task(ecs, cluster, watch.task_arn)
        watch.read(clients, log.info)
        return task if task is not None and task.get("lastStatus") == "STOPPED" else None

    timed_out: float | None = None
    try:
        task = poll(stopped, timeout=timeout, what=f"migration task {watch.task_arn.rsplit('/', 1)[-1]} to stop",
                    log=log.info, first=0.5, cap=clients.settings.poll_cap())
    except DeployError:
        timed_out = time.monotonic() - started
        log.warning("migration ran out of its %ss: stopping task %s", cfg.migrate.timeout_seconds,
                    watch.task_arn.rsplit("/", 1)[-1])
        ecs_ops.stop_one_task(ecs, cluster, watch.task_arn, f"ecs-pipeline: migration timed out after "
                              f"{cfg.migrate.timeout_seconds}s")
        with abort_when(None):  # a cancel must not leave it running either
            task = poll(stopped, timeout=STOP_WAIT, what="the timed-out migration task to stop",
                        log=log.info, cap=clients.settings.poll_cap())
    except BaseException:  # cancelled or lost the slot: the task must not go on changing the database
        ecs_ops.stop_one_task(ecs, cluster, watch.task_arn, "ecs-pipeline: the release was stopped")
        raise
    time.sleep(min(LOG_SETTLE, clients.settings.scaled(5)))  # wall time on AWS; a rehearsal's driver is done
    watch.read(clients, log.info)
    reason = verdict(cfg, task, watch.lines, timed_out)
    if reason is not None:
        raise VerifyFailed(reason, service=cfg.name, revision=str(task.get("taskDefinitionArn") or ""))
    words = f"migration `{command_words(cfg)}` exited 0 (task {task_id(task)}, {len(watch.lines)} log lines)"
    log.info("%s", words)
    return words

