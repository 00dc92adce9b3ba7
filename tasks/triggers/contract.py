"""What every trigger is: the event it reads, how that event is proven genuine, the commits it asks for.

A new trigger is one class in ``tasks/triggers/`` that satisfies ``Trigger``;
the flows only carry its events in (HTTP for the webhook senders, a Prefect
schedule for polling) and start the runs it asks for::

    Trigger[Event, Reading]
      kind                       "push" | "poll": the trigger:<kind> tag of the runs it starts
      authenticate(event)        raises NotAuthentic (or SecretUnavailable), never naming a secret
      read(event, services)      -> Reading: commits ((service, sha) pairs) or why it ignored the event;
                                 raises NotAnEvent when the event is not one it reads

The implementations: the GitHub, Gitea and GitLab push senders
(``webhooks.py``, one ``SenderRules`` row each) and branch polling
(``branch_polling.py``). What a trigger's commits become is shared below it:
``push_runs.py`` and ``poll_runs.py`` create the deploy-service runs and
supersede older waiting ones, ``webhook_deliveries.py`` remembers delivery ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

from tasks.config.models import ServiceConfig

RunTrigger = Literal["push", "poll"]


class NotAuthentic(Exception):
    """The event's signature or token does not check out; the message never says what was expected."""


class NotAnEvent(ValueError):
    """The event is not one the trigger reads; the message names the part that is wrong, never a secret."""


@dataclass(frozen=True)
class TriggeredCommit:
    """One (service, commit) pair a trigger asks to release."""

    config: ServiceConfig
    sha: str

    @property
    def service(self) -> str:
        return self.config.name


class Reading(Protocol):
    """What a trigger made of one event: the commits to release, or why it starts nothing."""

    @property
    def commits(self) -> Sequence[TriggeredCommit]: ...

    @property
    def ignored(self) -> str | None: ...


EventT = TypeVar("EventT", contravariant=True)
ReadingT = TypeVar("ReadingT", bound=Reading, covariant=True)


@runtime_checkable
class Trigger(Protocol[EventT, ReadingT]):
    """One way a commit asks to be released: its event, its authentication, the commits it yields."""

    @property
    def kind(self) -> RunTrigger: ...

    def authenticate(self, event: EventT) -> None:
        """Return when EVENT comes from whom it claims; raise NotAuthentic otherwise."""
        ...

    def read(self, event: EventT, services: Sequence[ServiceConfig]) -> ReadingT:
        """The (service, commit) pairs EVENT asks for among SERVICES; only for an authenticated event."""
        ...
