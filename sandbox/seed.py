"""Seed the sandbox with what a service's Terraform would already have created.

The pipeline deploys into existing infrastructure (cluster, service, load
balancer, target groups, alarms); in the sandbox that infrastructure is made
here, through plain boto3 against the sandbox endpoint. Every step describes
first and creates only what is missing, so seeding twice changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sandbox.engine import BUSYBOX, SandboxError, is_static_elf
from sandbox.layout import REPO
from sandbox.manage import load_env
from sandbox.seed_native import TRUST_ECS, native_service_args
from sandbox.seed_network import (
    Clients,
    check_names,
    ensure_alarms,
    ensure_load_balancing,
    ensure_network,
)
from sandbox.seed_stack import CODEDEPLOY_ROLE, INFRASTRUCTURE_ROLE, TEMPLATE, fits_template, seed_from_template
from tasks.aws.errors import error_code
from tasks.config.models import ListenerRef, ServiceConfig
from tasks.config.taskdef import ACCOUNT_PLACEHOLDER, REGION_PLACEHOLDER

SAMPLE_APP = REPO / "examples" / "sample-app"
SEED_TAG = "seed"
CONTROLLERS = {"task-sets": "EXTERNAL", "codedeploy": "CODE_DEPLOY", "rolling": "ECS", "ecs-native": "ECS"}
TRUST_ECS_TASKS = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
TRUST_CODEDEPLOY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "codedeploy.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def prefixed_config(config: ServiceConfig, prefix: str) -> ServiceConfig:
    """CONFIG with PREFIX on every resource name, for isolated copies of one service."""
    if not prefix:
        return config
    p = prefix
    update: dict[str, Any] = {
        "ecr": config.ecr.model_copy(update={"repository": p.lower() + config.ecr.repository}),
        "ecs": config.ecs.model_copy(
            update={"cluster": p + config.ecs.cluster, "service": p + config.ecs.service}
        ),
        "verify": config.verify.model_copy(
            update={"alarms": [p + a for a in config.verify.alarms]}
        ),
    }

    def role(arn: str | None) -> str | None:  # the copy's own deploy and build roles, as its stack names them
        if not arn:
            return arn
        head, _, name = arn.rpartition("/")
        return f"{head}/{p}{name}"

    update["deploy_role_arn"] = role(config.deploy_role_arn)
    update["build"] = config.build.model_copy(update={"role_arn": role(config.build.role_arn)})
    s = config.strategy
    update["strategy"] = s.model_copy(
        update={
            "codedeploy_application": p + s.codedeploy_application
            if s.codedeploy_application
            else None,
            "codedeploy_group": p + s.codedeploy_group if s.codedeploy_group else None,
        }
    )
    if (lb := config.load_balancer) is not None:

        def ref(r: ListenerRef) -> ListenerRef:
            return (
                r.model_copy(update={"load_balancer": p + r.load_balancer})
                if r.load_balancer
                else r
            )

        update["load_balancer"] = lb.model_copy(
            update={
                "production_listener": ref(lb.production_listener),
                "test_listener": ref(lb.test_listener),
                "target_groups": (p + lb.target_groups[0], p + lb.target_groups[1]),
            }
        )
    return config.model_copy(update=update)


def seed_service(
    config: ServiceConfig,
    prefix: str = "",
    env: Mapping[str, str] | None = None,
    deploy_principal: str | None = None,
) -> dict[str, Any]:
    """Create the service's existing infrastructure in the sandbox; returns names and ARNs.

    What infra/ecs-service.yaml describes comes from that template, as the stack ``<service>-infra``
    (seed_stack.py), but for the resource types the sandbox makes by API (seed_stack.MADE_BY_API).
    DEPLOY_PRINCIPAL: the IAM user the pipeline signs as, which gets the service's deploy policy
    (None: the policy is attached to nobody).
    """
    env = dict(env) if env is not None else load_env(admin=True)
    cfg = prefixed_config(config, prefix)
    aws = Clients(env)
    check_names(cfg)
    from_template = fits_template(cfg)
    if (deploy_principal or cfg.deploy_role_arn) and not from_template:
        raise SandboxError(f"{cfg.name}: {TEMPLATE.name} describes one load balancer with both listeners named "
                           "by it and a port; without it the seed makes no identities for a deploy principal")
    with _seed_lock(Path(env["SANDBOX_DIR"])):
        out: dict[str, Any] = {"prefix": prefix, "strategy": cfg.strategy.type}
        out["repository"] = cfg.ecr.repository
        out["cluster"] = cfg.ecs.cluster
        out["execution_role_arn"] = ensure_role(aws, "ecsTaskExecutionRole", TRUST_ECS_TASKS)
        net = ensure_network(aws)
        out.update(
            subnets=net["subnets"], security_group=net["security_group"], vpc_id=net["vpc_id"]
        )
        if cfg.strategy.type != "task-sets":
            image = ensure_seed_image(env, cfg.ecr.repository)
            out["image"] = image
            out["task_definition_arn"] = ensure_task_definition(aws, cfg, image, prefix)
        if from_template:
            out.update(seed_from_template(aws, cfg, out, net, deploy_principal))
        else:
            if cfg.load_balancer is not None:
                out.update(ensure_load_balancing(aws, cfg, net))
        out["repository_uri"] = ensure_repository(aws, cfg.ecr.repository)
        out["cluster_arn"] = ensure_cluster(aws, cfg.ecs.cluster)
        out["alarms"] = ensure_alarms(aws, cfg.verify.alarms, out.get("load_balancer_arn"))
        out["service"] = cfg.ecs.service
        out["service_arn"] = ensure_service(aws, cfg, out, net)
        if cfg.strategy.type == "codedeploy":
            out.update(ensure_codedeploy(aws, cfg, out))
    return out


@contextmanager
def _seed_lock(state: Path) -> Iterator[None]:
    """Seeds run from parallel test sessions: one at a time keeps describe-then-create honest."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".seed.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_repository(aws: Clients, name: str) -> str:
    try:
        repo = aws.ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
        repo = aws.ecr.create_repository(repositoryName=name)["repository"]
    return str(repo["repositoryUri"])


def ensure_cluster(aws: Clients, name: str) -> str:
    found = aws.ecs.describe_clusters(clusters=[name])["clusters"]
    active = [c for c in found if c.get("status") == "ACTIVE"]
    if active:
        return str(active[0]["clusterArn"])
    return str(aws.ecs.create_cluster(clusterName=name)["cluster"]["clusterArn"])


def ensure_role(aws: Clients, name: str, trust: dict[str, Any]) -> str:
    try:
        return str(aws.iam.get_role(RoleName=name)["Role"]["Arn"])
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
    doc = json.dumps(trust)
    return str(aws.iam.create_role(RoleName=name, AssumeRolePolicyDocument=doc)["Role"]["Arn"])


def ensure_seed_image(env: Mapping[str, str], repository: str) -> str:
    """The sample app as version "seed" in the local registry, so a new service can serve."""
    registry = env["SANDBOX_REGISTRY"]
    image = f"{registry}/{repository}:{SEED_TAG}"
    if _manifest_exists(registry, repository, SEED_TAG):
        return image
    import docker  # only seeding a CODE_DEPLOY or rolling service needs an engine

    client = docker.DockerClient(base_url=env["DOCKER_HOST"], timeout=300)
    try:
        with tempfile.TemporaryDirectory(prefix="seed-image-") as tmp:
            ctx = _seed_context(Path(tmp))
            client.images.build(
                path=str(ctx), tag=image, rm=True, forcerm=True, network_mode="host"
            )
        for line in client.images.push(
            f"{registry}/{repository}", tag=SEED_TAG, stream=True, decode=True
        ):
            if "error" in line:
                raise SandboxError(
                    f"push of {image} failed: {line['error']}; is the registry at {registry} up?"
                )
    except docker.errors.BuildError as exc:
        raise SandboxError(f"building the seed image from {SAMPLE_APP} failed: {exc.msg}") from exc
    finally:
        client.close()
    return image


def _seed_context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    shutil.copytree(SAMPLE_APP, ctx, ignore=shutil.ignore_patterns("busybox", ".git"))
    busybox = BUSYBOX
    if not is_static_elf(busybox):
        raise SandboxError(
            f"{busybox} is missing or not static; "
            "run `python -m sandbox up` (installs busybox-static)"
        )
    (ctx / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, ctx / "rootfs" / "bin" / "busybox")
    (ctx / "app.env").write_text(f"VERSION={SEED_TAG}\nBROKEN=\n")
    return ctx


def _manifest_exists(registry: str, repository: str, tag: str) -> bool:
    req = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False
    except urllib.error.URLError as exc:
        raise SandboxError(
            f"registry {registry} does not answer ({exc.reason}); run `python -m sandbox up`"
        ) from exc


def ensure_task_definition(aws: Clients, cfg: ServiceConfig, image: str, prefix: str) -> str:
    """The service's template with the seed image; reuses the latest revision when identical."""
    template_path = cfg.path(cfg.task_definition)
    try:
        raw = template_path.read_text().replace("<IMAGE1_NAME>", image)
        if ACCOUNT_PLACEHOLDER in raw:  # filled as the pipeline fills them when it renders
            raw = raw.replace(ACCOUNT_PLACEHOLDER, str(aws.sts.get_caller_identity()["Account"]))
        raw = raw.replace(REGION_PLACEHOLDER, aws.ecs.meta.region_name)
        template = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise SandboxError(
            f"{template_path}: cannot read the task definition template ({exc})"
        ) from exc
    allowed = set(
        aws.ecs.meta.service_model.operation_model("RegisterTaskDefinition").input_shape.members
    )
    family = prefix + str(template.get("family") or cfg.ecs.service)
    body = {k: v for k, v in template.items() if k in allowed}
    body["family"] = family
    # The newest revision with the seed image: after releases the family's latest runs their image, and a
    # second seed (make demo again) must name the revision the first one did, as the service's stack holds it.
    arns = aws.ecs.list_task_definitions(familyPrefix=family, sort="DESC")["taskDefinitionArns"]
    for arn in arns[:50]:
        if arn.rsplit("/", 1)[-1].rsplit(":", 1)[0] != family:
            continue  # another family that starts with this one's name
        found = aws.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        images = {c["name"]: c.get("image") for c in found.get("containerDefinitions", [])}
        if images.get(cfg.ecs.container) == image:
            return str(found["taskDefinitionArn"])
    return str(aws.ecs.register_task_definition(**body)["taskDefinition"]["taskDefinitionArn"])


def ensure_service(
    aws: Clients, cfg: ServiceConfig, seeded: Mapping[str, Any], net: dict[str, Any]
) -> str:
    """The ECS service with the deployment controller its strategy needs."""
    want = CONTROLLERS[cfg.strategy.type]
    found = aws.ecs.describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])[
        "services"
    ]
    active = [s for s in found if s.get("status") == "ACTIVE"]
    if active:
        have = active[0].get("deploymentController", {}).get("type", "ECS")
        if have != want:
            raise SandboxError(
                f"service {cfg.ecs.service} in cluster {cfg.ecs.cluster} exists with deployment "
                f"controller {have}, but strategy.type {cfg.strategy.type} needs {want}; "
                f"delete the service or change strategy"
            )
        return str(active[0]["serviceArn"])
    args: dict[str, Any] = {
        "cluster": cfg.ecs.cluster,
        "serviceName": cfg.ecs.service,
        "desiredCount": cfg.ecs.desired_count,
        "deploymentController": {"type": want},
    }
    if want != "EXTERNAL":  # task sets carry these; the first deploy creates one
        args.update(
            taskDefinition=seeded["task_definition_arn"],
            launchType="FARGATE",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": net["subnets"],
                    "securityGroups": [net["security_group"]],
                    "assignPublicIp": "DISABLED",
                }
            },
        )
        if "target_group_arns" in seeded:
            args["loadBalancers"] = [
                {
                    "targetGroupArn": seeded["target_group_arns"][0],
                    "containerName": cfg.ecs.container,
                    "containerPort": cfg.ecs.container_port,
                }
            ]
    if want == "ECS":
        args["deploymentConfiguration"] = {
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
            "minimumHealthyPercent": 100,
            "maximumPercent": 200,
        }
    if cfg.strategy.type == "ecs-native":
        role = ensure_role(aws, INFRASTRUCTURE_ROLE, TRUST_ECS)
        args.update(native_service_args(aws, cfg, seeded, role))
    return str(aws.ecs.create_service(**args)["service"]["serviceArn"])


def ensure_codedeploy(
    aws: Clients, cfg: ServiceConfig, seeded: Mapping[str, Any]
) -> dict[str, Any]:
    """CodeDeploy application and ECS blue/green deployment group, as the console makes them."""
    app, group = cfg.codedeploy_application, cfg.codedeploy_group
    try:
        aws.codedeploy.get_application(applicationName=app)
    except ClientError as exc:
        if error_code(exc) != "ApplicationDoesNotExistException":
            raise
        aws.codedeploy.create_application(applicationName=app, computePlatform="ECS")
    role = ensure_role(aws, CODEDEPLOY_ROLE, TRUST_CODEDEPLOY)
    try:
        aws.codedeploy.get_deployment_group(applicationName=app, deploymentGroupName=group)
    except ClientError as exc:
        if error_code(exc) != "DeploymentGroupDoesNotExistException":
            raise
        _create_deployment_group(aws, cfg, seeded, role)
    return {"codedeploy_application": app, "codedeploy_group": group, "codedeploy_role_arn": role}


def _create_deployment_group(
    aws: Clients, cfg: ServiceConfig, seeded: Mapping[str, Any], role: str
) -> None:
    alarms = list(seeded.get("alarms", {}))
    aws.codedeploy.create_deployment_group(
        applicationName=cfg.codedeploy_application,
        deploymentGroupName=cfg.codedeploy_group,
        serviceRoleArn=role,
        deploymentConfigName="CodeDeployDefault.ECSAllAtOnce",
        ecsServices=[{"serviceName": cfg.ecs.service, "clusterName": cfg.ecs.cluster}],
        deploymentStyle={
            "deploymentType": "BLUE_GREEN",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        },
        blueGreenDeploymentConfiguration={
            "terminateBlueInstancesOnDeploymentSuccess": {
                "action": "TERMINATE",
                "terminationWaitTimeInMinutes": 5,
            },
            "deploymentReadyOption": {
                "actionOnTimeout": "STOP_DEPLOYMENT",
                "waitTimeInMinutes": 30,
            },
        },
        loadBalancerInfo={
            "targetGroupPairInfoList": [
                {
                    "targetGroups": [{"name": n} for n in seeded["target_groups"]],
                    "prodTrafficRoute": {"listenerArns": [seeded["listener_arns"]["production"]]},
                    "testTrafficRoute": {"listenerArns": [seeded["listener_arns"]["test"]]},
                }
            ]
        },
        alarmConfiguration={"enabled": bool(alarms), "alarms": [{"name": a} for a in alarms]},
        autoRollbackConfiguration={
            "enabled": True,
            "events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"],
        },
    )
