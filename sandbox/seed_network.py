"""Network and load-balancing records for seeding: VPC, ALB, target groups, listeners, alarms.

Only moto's records: addresses inside the VPC are data, never contacted. The
sandbox controller fronts each listener with a real proxy on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox.engine import SandboxError
from tasks.aws.clients import boto3_session
from tasks.aws.errors import error_code
from tasks.config.models import ServiceConfig

NETWORK_NAME = "ecs-pipeline-sandbox"
AWS_NAME_MAX = 32  # load balancer and target group names


class Clients:
    """boto3 clients for the sandbox endpoint, made once per seed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._session = boto3_session(  # the process's decoded models: seeding a fleet decodes each once
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


# The seeded network's IDs, the same in every sandbox (the controller honours the sandbox:id tag), so a
# service YAML can name them in its network block (deployments/sample-app.yaml does).
VPC_ID = "vpc-0ec5ba5e000000001"
SUBNET_IDS = ("subnet-0ec5ba5e00000000a", "subnet-0ec5ba5e00000000b")
SECURITY_GROUP_ID = "sg-0ec5ba5e000000001"
ID_TAG = "sandbox:id"


def _named(kind: str, name: str, rid: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": "Name", "Value": name}, {"Key": ID_TAG, "Value": rid}]}]


def _with_id(rid: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{ID_TAG}", "Values": [rid]}]


def ensure_network(aws: Clients) -> dict[str, Any]:
    """A VPC, two subnets and a security group, as a real account has them: moto records only, never contacted."""
    ec2 = aws.ec2
    vpcs = ec2.describe_vpcs(Filters=_with_id(VPC_ID))["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(CidrBlock="127.100.0.0/16",
                                TagSpecifications=_named("vpc", NETWORK_NAME, VPC_ID))["Vpc"]["VpcId"]
    subnets = []
    for i, (rid, zone) in enumerate(zip(SUBNET_IDS, ("us-east-1a", "us-east-1b"), strict=True), start=1):
        found = ec2.describe_subnets(Filters=_with_id(rid))["Subnets"]
        subnets.append(found[0]["SubnetId"] if found else ec2.create_subnet(
            VpcId=vpc_id, CidrBlock=f"127.100.{i}.0/24", AvailabilityZone=zone,
            TagSpecifications=_named("subnet", f"{NETWORK_NAME}-{zone[-1]}", rid))["Subnet"]["SubnetId"])
    groups = ec2.describe_security_groups(Filters=_with_id(SECURITY_GROUP_ID))["SecurityGroups"]
    if groups:
        sg = groups[0]["GroupId"]
    else:
        sg = ec2.create_security_group(
            GroupName=NETWORK_NAME, Description="ecs-pipeline sandbox", VpcId=vpc_id,
            TagSpecifications=_named("security-group", NETWORK_NAME, SECURITY_GROUP_ID),
        )["GroupId"]
    return {"vpc_id": vpc_id, "subnets": subnets, "security_group": sg}


def ensure_load_balancing(aws: Clients, cfg: ServiceConfig, net: dict[str, Any]) -> dict[str, Any]:
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


def ensure_alb(aws: Clients, name: str, net: dict[str, Any]) -> str:
    try:
        return str(
            aws.elbv2.describe_load_balancers(Names=[name])["LoadBalancers"][0]["LoadBalancerArn"]
        )
    except ClientError as exc:
        if error_code(exc) != "LoadBalancerNotFound":
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
    aws: Clients, name: str, port: int, health_path: str, net: dict[str, Any]
) -> str:
    try:
        return str(
            aws.elbv2.describe_target_groups(Names=[name])["TargetGroups"][0]["TargetGroupArn"]
        )
    except ClientError as exc:
        if error_code(exc) != "TargetGroupNotFound":
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


def ensure_listener(aws: Clients, lb_arn: str, port: int, tg_arn: str) -> str:
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


def ensure_alarms(aws: Clients, names: list[str], lb_arn: str | None) -> dict[str, str]:
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


def check_names(cfg: ServiceConfig) -> None:
    """Fail before any call when a (prefixed) ALB or target group name is too long for AWS."""
    lb = cfg.load_balancer
    if lb is None:
        return
    names = [
        *lb.target_groups,
        lb.production_listener.load_balancer,
        lb.test_listener.load_balancer,
    ]
    for name in filter(None, names):
        if len(name) > AWS_NAME_MAX:
            raise SandboxError(
                f"{name!r} is {len(name)} characters; load balancer and target group names "
                f"allow {AWS_NAME_MAX}: use a shorter --prefix or name"
            )


def ensure_certificate(aws: Clients, domain: str, out_dir: Path) -> tuple[str, Path]:
    """An ACM certificate for DOMAIN issued by a local CA made for it: (certificate ARN, CA bundle).

    What a team has on AWS: a certificate for the service's own name, never one for the
    ALB's DNS name. Only the CA's certificate is written (OUT_DIR/<domain>-ca.pem, for
    verify.ca_bundle); both private keys stay in memory, the leaf's inside ACM.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ecs-pipeline sandbox CA for {domain}")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    arn = aws.acm.import_certificate(
        Certificate=leaf.public_bytes(pem),
        PrivateKey=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        CertificateChain=ca.public_bytes(pem),
    )["CertificateArn"]
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / f"{domain}-ca.pem"
    bundle.write_bytes(ca.public_bytes(pem))
    return str(arn), bundle


def serve_https(aws: Clients, listener_arn: str, certificate_arn: str) -> None:
    """Make a seeded listener HTTPS with the given certificate (its port and actions unchanged)."""
    aws.elbv2.modify_listener(ListenerArn=listener_arn, Protocol="HTTPS",
                              Certificates=[{"CertificateArn": certificate_arn}])
