"""First contact with real listeners: HTTPS for the service's own name, authentication actions kept,
and verification that does not count blue's answers while a listener change propagates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.services import ServiceUnderTest, aws, edit_config, make_service
from sandbox.seed_network import Clients, ensure_certificate
from tasks.release.outcome import outcome_of

OIDC = {"Issuer": "https://idp.example.test", "AuthorizationEndpoint": "https://idp.example.test/authorize",
        "TokenEndpoint": "https://idp.example.test/token", "UserInfoEndpoint": "https://idp.example.test/userinfo",
        "ClientId": "web-client", "ClientSecret": "not-a-real-secret"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    sut = make_service(tmp_path_factory.mktemp("first-contact"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        first = deploy_service(sut.name, return_state=True)
        assert outcome_of(first) == "Deployed", first.message
        yield sut
    sut.cleanup()


def _release(sut: ServiceUnderTest, version: str, broken: str = "") -> Any:
    sut.commit(version, broken=broken)
    return deploy_service(sut.name, return_state=True)


def test_verification_during_propagation_does_not_count_blues_answers(service: ServiceUnderTest) -> None:
    """The test listener's change reaches the ALB after a while; blue answers 200 meanwhile.
    A green whose / answers 500 must be caught before production moves."""
    state = _release(service, "v2", broken="root")
    assert outcome_of(state) == "Rolled back", state.message
    assert "GET / failed verification: returned 500" in (state.message or "")


def test_revision_header_proves_green_before_a_pass_counts(service: ServiceUnderTest) -> None:
    """With verify.revision_header, checks count only answers naming the release's commit."""
    edit_config(service, lambda c: c["verify"].update(revision_header="X-Revision", propagation_seconds=0))
    try:
        state = _release(service, "v3")
        assert outcome_of(state) == "Deployed", state.message
        assert service.get("/").headers["X-Revision"] == _head(service)
    finally:
        edit_config(service, lambda c: [c["verify"].pop(k, None) for k in ("revision_header", "propagation_seconds")])


def test_https_listener_for_the_service_host_and_authenticate_action_kept(
        service: ServiceUnderTest, tmp_path: Path) -> None:
    """An HTTPS test listener with a certificate for the service's own name: checks without
    verify.host fail saying why; with it (and the CA bundle) they pass. The production listener's
    authenticate-oidc action and stickiness survive the release's weight changes."""
    import os

    domain = f"{service.name}.example.test"
    aws_env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    aws_env["AWS_REGION"] = "us-east-1"
    cert, ca = ensure_certificate(Clients(aws_env), domain, tmp_path)
    elbv2 = aws("elbv2")
    listeners = service.seeded["listener_arns"]
    for arn in listeners.values():
        elbv2.modify_listener(ListenerArn=arn, Protocol="HTTPS", Certificates=[{"CertificateArn": cert}])
    prod = elbv2.describe_listeners(ListenerArns=[listeners["production"]])["Listeners"][0]
    forward = next(a for a in prod["DefaultActions"] if a["Type"] == "forward")
    forward = {**forward, "Order": 2, "ForwardConfig": {
        **forward["ForwardConfig"], "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 600}}}
    elbv2.modify_listener(ListenerArn=listeners["production"], DefaultActions=[
        {"Type": "authenticate-oidc", "Order": 1, "AuthenticateOidcConfig": OIDC}, forward])

    state = _release(service, "v4")
    assert outcome_of(state) == "Rolled back", state.message
    assert "does not cover the load balancer's DNS name" in (state.message or "")
    assert "set verify.host" in (state.message or "")

    edit_config(service, lambda c: c["verify"].update(host=domain, ca_bundle=str(ca)))
    state = deploy_service(service.name, return_state=True)
    assert outcome_of(state) == "Deployed", state.message

    actions = elbv2.describe_listeners(ListenerArns=[listeners["production"]])["Listeners"][0]["DefaultActions"]
    assert [a["Type"] for a in sorted(actions, key=lambda a: a["Order"])] == ["authenticate-oidc", "forward"]
    forward = next(a for a in actions if a["Type"] == "forward")
    assert forward["ForwardConfig"]["TargetGroupStickinessConfig"] == {"Enabled": True, "DurationSeconds": 600}
    assert [g["Weight"] for g in forward["ForwardConfig"]["TargetGroups"] if g["Weight"]] == [100]


def _head(sut: ServiceUnderTest) -> str:
    from harness.git import git

    return git(sut.repo, "rev-parse", "HEAD")
