"""Listeners as strict as ELB: propagation delay, authentication actions, certificates, internal ALBs.

Each test quotes the AWS document the sandbox follows.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.seed_network import ensure_certificate

OIDC = {"Issuer": "https://idp.example.test", "AuthorizationEndpoint": "https://idp.example.test/authorize",
        "TokenEndpoint": "https://idp.example.test/token", "UserInfoEndpoint": "https://idp.example.test/userinfo",
        "ClientId": "web-client", "ClientSecret": "not-a-real-secret"}


def _get(port: int, host: str, ca: Path, path: str = "/") -> tuple[int, dict[str, str], str]:
    """GET over TLS to 127.0.0.1:PORT asking for HOST (SNI and Host), trusting only CA."""
    import http.client

    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=host)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


@pytest.fixture
def https_stack(emu: Any, emu_stack: Callable[..., Any], emu_aws: Callable[[str], Any], tmp_path: Path) -> Any:
    """A stack whose production listener serves HTTPS with a certificate for its own domain."""
    stack = emu_stack("tls")
    domain = f"{stack.name}.example.test"
    arn, ca = ensure_certificate(SimpleNamespace(acm=emu_aws("acm")), domain, tmp_path)
    stack.elb.modify_listener(ListenerArn=stack.prod, Protocol="HTTPS", Certificates=[{"CertificateArn": arn}])
    emu.wait_for(lambda: _try(lambda: _get(stack.prod_port, domain, ca)), 10, "the listener to serve HTTPS")
    return SimpleNamespace(stack=stack, domain=domain, ca=ca, cert=arn)


def test_https_listener_serves_the_certificate_for_the_service_domain_not_the_alb_name(
        emu: Any, https_stack: Any) -> None:
    """botocore, acm RequestCertificate DomainName: "Fully qualified domain name (FQDN), such as
    www.example.com, that you want to secure with an ACM certificate." A team holds certificates for
    its own names; none covers the ALB's DNS name, so a client asking for that name is refused."""
    s = https_stack
    status = _get(s.stack.prod_port, s.domain, s.ca)[0]
    assert status == 503  # no targets yet: the listener answers, over TLS, for the service's name
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(s.stack.prod_port, s.stack.dns, s.ca)


def test_authentication_actions_only_on_https_and_unauthenticated_clients_are_sent_to_the_idp(
        emu: Any, https_stack: Any) -> None:
    """botocore, elbv2 Action: "Optionally, a rule for an HTTPS listener can also include one of the
    following user authentication actions: authenticate-oidc, authenticate-cognito, or jwt-validation."
    AuthenticateOidcActionConfig.OnUnauthenticatedRequest: "deny - Return an HTTP 401 Unauthorized
    error. allow - Allow the request to be forwarded to the target. authenticate - Redirect the request
    to the IdP authorization endpoint. This is the default value." No IdP is reachable here, so no
    request is ever authenticated."""
    s = https_stack
    forward = {"Type": "forward", "Order": 2, "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": s.stack.tgs[0], "Weight": 100}],
        "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 300}}}
    with pytest.raises(ClientError) as refused:
        s.stack.elb.modify_listener(ListenerArn=s.stack.test, DefaultActions=[
            {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": OIDC}, forward])
    assert refused.value.response["Error"]["Code"] == "InvalidLoadBalancerAction"

    s.stack.elb.modify_listener(ListenerArn=s.stack.prod, DefaultActions=[
        {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": OIDC}, forward])

    def redirected() -> str | None:
        status, headers, _ = _get(s.stack.prod_port, s.domain, s.ca)
        return headers.get("Location") if status == 302 else None

    location = emu.wait_for(redirected, 10, "a redirect to the IdP")
    assert location.startswith("https://idp.example.test/authorize?client_id=web-client")
    assert f"redirect_uri=https%3A%2F%2F{s.domain}%2Foauth2%2Fidpresponse" in location

    deny = dict(OIDC, OnUnauthenticatedRequest="deny")
    s.stack.elb.modify_listener(ListenerArn=s.stack.prod, DefaultActions=[
        {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": deny}, forward])
    emu.wait_for(lambda: _get(s.stack.prod_port, s.domain, s.ca)[0] == 401, 10, "401 for deny")


def test_oidc_client_secret_is_required_unless_the_existing_one_is_kept(https_stack: Any) -> None:
    """botocore, elbv2 AuthenticateOidcActionConfig.ClientSecret: "This parameter is required if you
    are creating a rule. If you are modifying a rule, you can omit this parameter if you set
    UseExistingClientSecret to true." """
    s = https_stack
    forward = {"Type": "forward", "Order": 2, "TargetGroupArn": s.stack.tgs[0]}
    s.stack.elb.modify_listener(ListenerArn=s.stack.prod, DefaultActions=[
        {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": OIDC}, forward])
    without = {k: v for k, v in OIDC.items() if k != "ClientSecret"}
    with pytest.raises(ClientError) as refused:
        s.stack.elb.modify_listener(ListenerArn=s.stack.prod, DefaultActions=[
            {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": without}, forward])
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    s.stack.elb.modify_listener(ListenerArn=s.stack.prod, DefaultActions=[
        {"Type": "authenticate-oidc", "Order": 1,
         "AuthenticateOidcConfig": dict(without, UseExistingClientSecret=True)}, forward])


def test_listener_change_takes_effect_after_a_delay_while_the_old_group_answers(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str], emu_net: dict[str, Any]) -> None:
    """ELB guide, "Edit a listener rule for your Application Load Balancer": "Rule updates do not
    take effect immediately, so requests could be routed using the previous rule configuration for a
    short time after you update a rule." (no bound is documented: the sandbox waits 30 s, time-scaled)"""
    stack = emu_stack("prop")
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1,
                             deploymentController={"type": "EXTERNAL"})
    for image, tg in (("blue", stack.tgs[0]), ("green", stack.tgs[1])):
        stack.ecs.create_task_set(cluster=stack.name, service="web", launchType="FARGATE",
                                  taskDefinition=stack.task_definition(emu_images[image]),
                                  loadBalancers=stack.lb(tg), scale={"value": 100, "unit": "PERCENT"},
                                  networkConfiguration={"awsvpcConfiguration": {"subnets": emu_net["subnets"]}})
    emu.wait_for(lambda: stack.get()[1].strip() == "blue", 60, "blue serving")
    emu.wait_for(lambda: [h["TargetHealth"]["State"] for h in stack.elb.describe_target_health(
        TargetGroupArn=stack.tgs[1])["TargetHealthDescriptions"]] == ["healthy"], 60, "green healthy")
    stack.elb.modify_listener(ListenerArn=stack.prod, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": stack.tgs[1]}])
    changed = time.monotonic()
    right_after = [stack.get()[1].strip() for _ in range(3)]
    assert right_after == ["blue"] * 3, "the change reached the listener at once"
    emu.wait_for(lambda: stack.get()[1].strip() == "green", 15, "the change to take effect")
    assert time.monotonic() - changed >= 0.2


def test_internal_load_balancer_is_not_reachable_from_the_worker(
        emu_aws: Callable[[str], Any], emu_net: dict[str, Any]) -> None:
    """botocore, elbv2 LoadBalancer.Scheme: "The DNS name of an internal load balancer is publicly
    resolvable to the private IP addresses of the nodes. Therefore, internal load balancers can route
    requests only from clients with access to the VPC for the load balancer." The worker is outside."""
    elb = emu_aws("elbv2")
    made = elb.create_load_balancer(Name=f"int-{uuid.uuid4().hex[:6]}", Subnets=emu_net["subnets"],
                                    Scheme="internal", Type="application")["LoadBalancers"][0]
    try:
        assert made["Scheme"] == "internal" and made["DNSName"] != "127.0.0.1"
        with pytest.raises(OSError):
            socket.create_connection((made["DNSName"], 80), timeout=3).close()
    finally:
        elb.delete_load_balancer(LoadBalancerArn=made["LoadBalancerArn"])


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except OSError:
        return None
