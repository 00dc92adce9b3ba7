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

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox.engine import SandboxError
from sandbox.manage import REPO, load_env
from tasks.models import ListenerRef, ServiceConfig

SAMPLE_APP = REPO / "examples" / "sample-app"
SEED_TAG = "seed"
NETWORK_NAME = "ecs-pipeline-sandbox"
CONTROLLERS = {"task-sets": "EXTERNAL", "codedeploy": "CODE_DEPLOY", "rolling": "ECS"}
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
    config: ServiceConfig, prefix: str = "", env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Create the service's existing infrastructure in the sandbox; returns names and ARNs."""
    env = dict(env) if env is not None else load_env()
    cfg = prefixed_config(config, prefix)
    aws = _Clients(env)
    with _seed_lock(Path(env["SANDBOX_DIR"])):
        out: dict[str, Any] = {"prefix": prefix, "strategy": cfg.strategy.type}
        out["repository"] = cfg.ecr.repository
        out["repository_uri"] = ensure_repository(aws, cfg.ecr.repository)
        out["cluster"] = cfg.ecs.cluster
        out["cluster_arn"] = ensure_cluster(aws, cfg.ecs.cluster)
        out["execution_role_arn"] = ensure_role(aws, "ecsTaskExecutionRole", TRUST_ECS_TASKS)
        net = ensure_network(aws)
        out.update(
            subnets=net["subnets"], security_group=net["security_group"], vpc_id=net["vpc_id"]
        )
        if cfg.load_balancer is not None:
            out.update(ensure_load_balancing(aws, cfg, net))
        out["alarms"] = ensure_alarms(aws, cfg.verify.alarms, out.get("load_balancer_arn"))
        if cfg.strategy.type != "task-sets":
            image = ensure_seed_image(env, cfg.ecr.repository)
            out["image"] = image
            out["task_definition_arn"] = ensure_task_definition(aws, cfg, image, prefix)
        out["service"] = cfg.ecs.service
        out["service_arn"] = ensure_service(aws, cfg, out, net)
        if cfg.strategy.type == "codedeploy":
            out.update(ensure_codedeploy(aws, cfg, out))
    return out


class _Clients:
    """boto3 clients for the sandbox endpoint, made once per seed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "testing"),
            region_name=env.get("AWS_REGION", "us-east-1"),
        )
        self._endpoint = env["AWS_ENDPOINT_URL"]
        self._cache: dict[str, Any] = {}
        self._config = Config(
            retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60
        )

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._cache:
            self._cache[service] = self._session.client(
                service, endpoint_url=self._endpoint, config=self._config
            )
        return self._cache[service]


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


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_repository(aws: _Clients, name: str) -> str:
    try:
        repo = aws.ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as exc:
        if _code(exc) != "RepositoryNotFoundException":
            raise
        repo = aws.ecr.create_repository(repositoryName=name)["repository"]
    return str(repo["repositoryUri"])


def ensure_cluster(aws: _Clients, name: str) -> str:
    found = aws.ecs.describe_clusters(clusters=[name])["clusters"]
    active = [c for c in found if c.get("status") == "ACTIVE"]
    if active:
        return str(active[0]["clusterArn"])
    return str(aws.ecs.create_cluster(clusterName=name)["cluster"]["clusterArn"])


def ensure_role(aws: _Clients, name: str, trust: dict[str, Any]) -> str:
    try:
        return str(aws.iam.get_role(RoleName=name)["Role"]["Arn"])
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
    doc = json.dumps(trust)
    return str(aws.iam.create_role(RoleName=name, AssumeRolePolicyDocument=doc)["Role"]["Arn"])


def ensure_network(aws: _Clients) -> dict[str, Any]:
    """A VPC, two subnets and a security group: moto records only, never contacted."""
    ec2 = aws.ec2
    tag = [{"Name": "tag:Name", "Values": [NETWORK_NAME]}]
    vpcs = ec2.describe_vpcs(Filters=tag)["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": NETWORK_NAME}])
    in_vpc = [{"Name": "vpc-id", "Values": [vpc_id]}]
    subnets = sorted(ec2.describe_subnets(Filters=in_vpc)["Subnets"], key=lambda s: s["CidrBlock"])
    for i, zone in enumerate(("us-east-1a", "us-east-1b")[len(subnets) :], start=len(subnets) + 1):
        subnets.append(
            ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=zone)[
                "Subnet"
            ]
        )
    groups = ec2.describe_security_groups(
        Filters=[*in_vpc, {"Name": "group-name", "Values": [NETWORK_NAME]}]
    )
    if groups["SecurityGroups"]:
        sg = groups["SecurityGroups"][0]["GroupId"]
    else:
        sg = ec2.create_security_group(
            GroupName=NETWORK_NAME, Description="ecs-pipeline sandbox", VpcId=vpc_id
        )["GroupId"]
    return {"vpc_id": vpc_id, "subnets": [s["SubnetId"] for s in subnets[:2]], "security_group": sg}


def ensure_load_balancing(aws: _Clients, cfg: ServiceConfig, net: dict[str, Any]) -> dict[str, Any]:
    """ALB(s), both target groups and both listeners, each forwarding to the first group."""
    assert cfg.load_balancer is not None
    lb_cfg = cfg.load_balancer
    health_path = cfg.verify.http[0].path if cfg.verify.http else "/health"
    tg_arns = [
        ensure_target_group(aws, name, cfg.ecs.container_port, health_path, net)
        for name in lb_cfg.target_groups
    ]
    listeners: dict[str, str] = {}
    lb_arns: dict[str, str] = {}
    for role, ref in (("production", lb_cfg.production_listener), ("test", lb_cfg.test_listener)):
        if ref.arn is not None:
            listeners[role] = ref.arn
            continue
        assert ref.load_balancer is not None and ref.port is not None
        if ref.load_balancer not in lb_arns:
            lb_arns[ref.load_balancer] = ensure_alb(aws, ref.load_balancer, net)
        listeners[role] = ensure_listener(aws, lb_arns[ref.load_balancer], ref.port, tg_arns[0])
    prod_lb = lb_cfg.production_listener.load_balancer
    return {
        "target_groups": list(lb_cfg.target_groups),
        "target_group_arns": tg_arns,
        "load_balancers": sorted(lb_arns),
        "load_balancer_arn": lb_arns.get(prod_lb) if prod_lb else None,
        "listener_arns": listeners,
    }


def ensure_alb(aws: _Clients, name: str, net: dict[str, Any]) -> str:
    try:
        return str(
            aws.elbv2.describe_load_balancers(Names=[name])["LoadBalancers"][0]["LoadBalancerArn"]
        )
    except ClientError as exc:
        if _code(exc) != "LoadBalancerNotFound":
            raise
    made = aws.elbv2.create_load_balancer(
        Name=name,
        Subnets=net["subnets"],
        SecurityGroups=[net["security_group"]],
        Scheme="internet-facing",
        Type="application",
    )
    return str(made["LoadBalancers"][0]["LoadBalancerArn"])


def ensure_target_group(
    aws: _Clients, name: str, port: int, health_path: str, net: dict[str, Any]
) -> str:
    try:
        return str(
            aws.elbv2.describe_target_groups(Names=[name])["TargetGroups"][0]["TargetGroupArn"]
        )
    except ClientError as exc:
        if _code(exc) != "TargetGroupNotFound":
            raise
    arn = str(
        aws.elbv2.create_target_group(
            Name=name,
            Protocol="HTTP",
            Port=port,
            VpcId=net["vpc_id"],
            TargetType="ip",
            HealthCheckProtocol="HTTP",
            HealthCheckPath=health_path,
            HealthCheckIntervalSeconds=5,
            HealthCheckTimeoutSeconds=4,  # must be below the interval
            HealthyThresholdCount=2,
            UnhealthyThresholdCount=2,
        )["TargetGroups"][0]["TargetGroupArn"]
    )
    aws.elbv2.modify_target_group_attributes(
        TargetGroupArn=arn,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}],
    )
    return arn


def ensure_listener(aws: _Clients, lb_arn: str, port: int, tg_arn: str) -> str:
    for listener in aws.elbv2.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]:
        if listener["Port"] == port:
            return str(listener["ListenerArn"])
    action = {
        "Type": "forward",
        "TargetGroupArn": tg_arn,
        "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": tg_arn, "Weight": 100}]},
    }
    made = aws.elbv2.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=port, DefaultActions=[action]
    )
    return str(made["Listeners"][0]["ListenerArn"])


def ensure_alarms(aws: _Clients, names: list[str], lb_arn: str | None) -> dict[str, str]:
    """One whole-ALB 5xx alarm per name (a single alarm cannot watch both target groups)."""
    if not names:
        return {}
    if lb_arn is None:
        raise SandboxError(
            "verify.alarms needs load_balancer.production_listener with a load_balancer name"
        )
    dimension = lb_arn.split(":loadbalancer/", 1)[1]  # app/<name>/<id>
    existing = {
        a["AlarmName"]: a["AlarmArn"]
        for a in aws.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
    }
    for name in names:
        if name in existing:
            continue
        aws.cloudwatch.put_metric_alarm(
            AlarmName=name,
            AlarmDescription="5xx answers from the service's load balancer",
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_Target_5XX_Count",
            Dimensions=[{"Name": "LoadBalancer", "Value": dimension}],
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=5,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    found = aws.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
    return {a["AlarmName"]: a["AlarmArn"] for a in found}


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
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise SandboxError(
            "/bin/busybox is missing; run `python -m sandbox up` (installs busybox-static)"
        )
    shutil.copy2(busybox, ctx / "busybox")
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


def ensure_task_definition(aws: _Clients, cfg: ServiceConfig, image: str, prefix: str) -> str:
    """The service's template with the seed image; reuses the latest revision when identical."""
    template_path = cfg.path(cfg.task_definition)
    try:
        raw = template_path.read_text().replace("<IMAGE1_NAME>", image)
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
    try:
        latest = aws.ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
        images = {c["name"]: c.get("image") for c in latest.get("containerDefinitions", [])}
        if images.get(cfg.ecs.container) == image:
            return str(latest["taskDefinitionArn"])
    except ClientError as exc:
        if _code(exc) not in ("ClientException", "InvalidParameterException"):
            raise
    return str(aws.ecs.register_task_definition(**body)["taskDefinition"]["taskDefinitionArn"])


def ensure_service(
    aws: _Clients, cfg: ServiceConfig, seeded: Mapping[str, Any], net: dict[str, Any]
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
                f"service {cfg.ecs.service} in cluster {cfg.ecs.cluster} exists with deployment controller "
                f"{have}, but strategy.type {cfg.strategy.type} needs {want}; delete the service or change strategy"
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
    return str(aws.ecs.create_service(**args)["service"]["serviceArn"])


def ensure_codedeploy(
    aws: _Clients, cfg: ServiceConfig, seeded: Mapping[str, Any]
) -> dict[str, Any]:
    """CodeDeploy application and ECS blue/green deployment group, as the console makes them."""
    app, group = cfg.codedeploy_application, cfg.codedeploy_group
    try:
        aws.codedeploy.get_application(applicationName=app)
    except ClientError as exc:
        if _code(exc) != "ApplicationDoesNotExistException":
            raise
        aws.codedeploy.create_application(applicationName=app, computePlatform="ECS")
    role = ensure_role(aws, "ecsCodeDeployRole", TRUST_CODEDEPLOY)
    try:
        aws.codedeploy.get_deployment_group(applicationName=app, deploymentGroupName=group)
    except ClientError as exc:
        if _code(exc) != "DeploymentGroupDoesNotExistException":
            raise
        _create_deployment_group(aws, cfg, seeded, role)
    return {"codedeploy_application": app, "codedeploy_group": group, "codedeploy_role_arn": role}


def _create_deployment_group(
    aws: _Clients, cfg: ServiceConfig, seeded: Mapping[str, Any], role: str
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
