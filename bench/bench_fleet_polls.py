"""AWS calls per minute while a hundred services wait at once, against AWS's documented per-account rates.

A hundred releases in one process (a fleet's threads), each waiting with the pipeline's own waits
(tasks/core/waits.poll: 0.2 s first, x1.5, capped at 5 s as against AWS) on its own service
(DescribeServices), its two target groups (DescribeTargetHealth) and its alarm (DescribeAlarms),
through the pipeline's own reads (tasks/aws/ecs.describe_service, tasks/strategies/verification),
against the sandbox's API: every wait at once, the worst a fleet can do. Twice: with the reads
shared as the pipeline makes them (tasks/aws/shared_reads.py, one second apart per group as
against AWS), and one call per read as before. Calls are counted per operation by a botocore
event hook on the clients.

Limits (per account and Region), as AWS documents them:
* ECS DescribeServices ("service read actions"): 20 requests per second sustained, the token
  bucket's refill rate ("Request throttling for the Amazon ECS API");
* CloudWatch DescribeAlarms: 9 per second ("CloudWatch service quotas": Rate of DescribeAlarms
  requests);
* Elastic Load Balancing documents no per-action rate for DescribeTargetHealth.

    uv run python -m bench.bench_fleet_polls [--services 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import uuid
from collections import Counter
from typing import Any

from bench.figures import table

LIMITS_PER_MINUTE = {"DescribeServices": 20 * 60, "DescribeAlarms": 9 * 60}
CLUSTERS = 2  # a hundred services in two clusters, as a team with a staging and a production cluster has


def make_world(n: int) -> dict[str, Any]:
    from harness.services import aws

    tag = uuid.uuid4().hex[:6]
    ecs, elbv2, cw, ec2 = aws("ecs"), aws("elbv2"), aws("cloudwatch"), aws("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    clusters = [f"polls-{tag}-{c}" for c in range(CLUSTERS)]
    for c in clusters:
        ecs.create_cluster(clusterName=c)
    world: dict[str, Any] = {"clusters": clusters, "services": []}
    for i in range(n):
        name = f"p{tag}-{i:03d}"
        cluster = clusters[i % CLUSTERS]
        ecs.create_service(cluster=cluster, serviceName=name, desiredCount=0, launchType="FARGATE")
        groups = [elbv2.create_target_group(Name=f"{name}-{x}", Protocol="HTTP", Port=80, VpcId=vpc,
                                            TargetType="ip")["TargetGroups"][0]["TargetGroupArn"] for x in "ab"]
        alarm = f"{name}-5xx"
        cw.put_metric_alarm(AlarmName=alarm, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
                            Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                            ComparisonOperator="GreaterThanOrEqualToThreshold")
        world["services"].append({"name": name, "cluster": cluster, "groups": groups, "alarm": alarm})
    return world


def remove_world(world: dict[str, Any]) -> None:
    from harness.services import aws

    for s in world["services"]:
        with contextlib.suppress(Exception):
            aws("ecs").delete_service(cluster=s["cluster"], service=s["name"], force=True)
        for arn in s["groups"]:
            with contextlib.suppress(Exception):
                aws("elbv2").delete_target_group(TargetGroupArn=arn)
    with contextlib.suppress(Exception):
        aws("cloudwatch").delete_alarms(AlarmNames=[s["alarm"] for s in world["services"]])
    for c in world["clusters"]:
        with contextlib.suppress(Exception):
            aws("ecs").delete_cluster(cluster=c)


def wait_all(world: dict[str, Any], seconds: float, shared: bool) -> Counter[str]:
    """Every service waiting at once for SECONDS; the AWS calls made, by operation."""
    from tasks.aws import shared_reads
    from tasks.aws.clients import AwsClients
    from tasks.aws.ecs import describe_service
    from tasks.core.errors import DeployError
    from tasks.core.settings import Settings
    from tasks.core.waits import poll
    from tasks.strategies.verification import alarms_firing, unhealthy_targets

    clients = AwsClients(Settings())
    ecs, elbv2, cw = clients.get("ecs"), clients.get("elbv2"), clients.get("cloudwatch")
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(model: Any, **_: Any) -> None:
        with lock:
            calls[model.name] += 1

    for client in (ecs, elbv2, cw):
        client.meta.events.register("before-call", count)
    shared_reads._SPACING[:] = [shared_reads.SPACING_SECONDS]  # as against AWS, whatever the sandbox's time scale

    def one(svc: dict[str, Any]) -> None:
        def look() -> None:
            if shared:
                describe_service(ecs, svc["cluster"], svc["name"])
                for arn in svc["groups"]:
                    unhealthy_targets(elbv2, arn)
                alarms_firing(cw, [svc["alarm"]])
            else:
                ecs.describe_services(cluster=svc["cluster"], services=[svc["name"]])
                for arn in svc["groups"]:
                    elbv2.describe_target_health(TargetGroupArn=arn)
                cw.describe_alarms(AlarmNames=[svc["alarm"]])
            return None

        with contextlib.suppress(DeployError):  # the wait's end: it never comes true
            poll(look, timeout=seconds, what="nothing: the bench's wait", cap=5.0)

    threads = [threading.Thread(target=one, args=(s,)) for s in world["services"]]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
    finally:
        for client in (ecs, elbv2, cw):
            client.meta.events.unregister("before-call", count)
        shared_reads._SPACING.clear()
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    args, _ = parser.parse_known_args()
    # The one-by-one baseline has a hundred threads read through clients of 32 pooled connections each:
    # urllib3 says so once per surplus connection, hundreds of lines that are the baseline's point.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    world = make_world(args.services)
    try:
        found = {mode: wait_all(world, args.seconds, mode == "shared") for mode in ("shared", "one by one")}
    finally:
        remove_world(world)
    per_minute = 60.0 / args.seconds
    rows = []
    for op in ("DescribeServices", "DescribeTargetHealth", "DescribeAlarms"):
        limit = LIMITS_PER_MINUTE.get(op)
        shared, alone = found["shared"][op] * per_minute, found["one by one"][op] * per_minute
        rows.append((op, round(shared), round(alone), f"{limit}" if limit else "none documented",
                     f"{shared / limit:.0%}" if limit else "-", f"{alone / limit:.0%}" if limit else "-"))
    table(f"AWS calls per minute, {args.services} services waiting at once in {CLUSTERS} clusters "
          f"({args.seconds:.0f} s measured): shared reads (the pipeline) vs one call per read",
          ("operation", "shared", "one by one", "AWS limit / min", "shared of limit", "one by one of limit"), rows)
    return 0


if __name__ == "__main__":
    from bench.bench_pipeline import load_sandbox

    load_sandbox()
    raise SystemExit(main())
