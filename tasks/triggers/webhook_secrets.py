"""One webhook secret per sender (GitHub, Gitea, GitLab), from Settings or a Prefect Secret block.

Secrets are never shared between senders: GitHub and Gitea sign each payload
with an HMAC key that never travels, while GitLab sends its token in clear in
every request, so a GitLab token equal to an HMAC key would hand that key to
anyone who sees one GitLab delivery. A sender with no secret configured is
switched off. Values stay ``SecretStr`` until the moment of comparison, and no
message here ever contains one.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

from tasks.core.settings import Settings

SENDERS = ("github", "gitea", "gitlab")
HMAC_SENDERS = ("github", "gitea")
LoadBlock = Callable[[str], str]


class SecretUnavailable(LookupError):
    """A configured secret cannot be used now; the message names settings, never values."""


def secret_variables(sender: str) -> str:
    """The environment variables that configure SENDER's secret, for messages."""
    var = f"ECS_PIPELINE_{sender.upper()}_WEBHOOK_SECRET"
    return f"{var} or {var}_BLOCK"


def _load_block(name: str) -> str:
    from prefect.blocks.system import Secret

    block: Any = Secret.load(name)
    return str(block.get())


class WebhookSecrets:
    """Each sender's secret: a value, or a Secret block read at most every CACHE_SECONDS (rotation)."""

    def __init__(
        self,
        values: Mapping[str, SecretStr | str | None] | None = None,
        blocks: Mapping[str, str | None] | None = None,
        *,
        cache_seconds: float = 300,
        load_block: LoadBlock = _load_block,
    ) -> None:
        given = values or {}
        self._values = {s: _as_secret(given.get(s)) for s in SENDERS}
        self._blocks = {s: (blocks or {}).get(s) or None for s in SENDERS}
        self._cache_seconds = cache_seconds
        self._load_block = load_block
        self._cached: dict[str, tuple[SecretStr, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WebhookSecrets:
        values = {s: getattr(settings, f"{s}_webhook_secret") for s in SENDERS}
        blocks = {s: getattr(settings, f"{s}_webhook_secret_block") for s in SENDERS}
        return cls(values, blocks, **kwargs)

    def enabled(self, sender: str) -> bool:
        """Whether SENDER's endpoint is on: a secret or a block is configured for it."""
        return sender in SENDERS and (self._values[sender] is not None or self._blocks[sender] is not None)

    def enabled_senders(self) -> list[str]:
        return [s for s in SENDERS if self.enabled(s)]

    def get(self, sender: str) -> SecretStr:
        """SENDER's secret; SecretUnavailable when it is off, unreadable, empty or shared."""
        secret = self._read(sender)
        if sender == "gitlab":
            for other in HMAC_SENDERS:
                if self.enabled(other) and _same(secret, self._read(other)):
                    raise SecretUnavailable(
                        f"the GitLab token equals the {other} HMAC secret; GitLab sends its token in "
                        f"clear, so give {secret_variables('gitlab')} a value of its own"
                    )
        return secret

    def check(self) -> list[str]:
        """Read every enabled secret once (at start, not at the first push); the senders on."""
        on = self.enabled_senders()
        if not on:
            raise SecretUnavailable(
                "no webhook secret configured; set " + "; ".join(secret_variables(s) for s in SENDERS)
            )
        for sender in on:
            self.get(sender)
        return on

    def _read(self, sender: str) -> SecretStr:
        if not self.enabled(sender):
            raise SecretUnavailable(f"{sender} webhooks are off; set {secret_variables(sender)}")
        value = self._values[sender]
        if value is None:
            value = self._from_block(sender, str(self._blocks[sender]))
        if not value.get_secret_value():
            raise SecretUnavailable(f"the {sender} webhook secret is empty; set {secret_variables(sender)}")
        return value

    def _from_block(self, sender: str, block: str) -> SecretStr:
        with self._lock:
            cached = self._cached.get(sender)
            if cached and time.monotonic() - cached[1] < self._cache_seconds:
                return cached[0]
            try:
                value = SecretStr(self._load_block(block))
            except Exception:  # noqa: BLE001 - the block store's error may quote what it read
                raise SecretUnavailable(
                    f"cannot read Secret block {block!r} for {sender} webhooks; check that it exists"
                ) from None
            self._cached[sender] = (value, time.monotonic())
            return value


def _as_secret(value: SecretStr | str | None) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value if value is None or value.get_secret_value() else None
    return SecretStr(value) if value else None


def _same(a: SecretStr, b: SecretStr) -> bool:
    return hmac.compare_digest(a.get_secret_value().encode(), b.get_secret_value().encode())
