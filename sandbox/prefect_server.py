"""The sandbox's Prefect server: ``prefect server start``, with SQLite's writers taking turns.

Prefect opens a write transaction on SQLite as DEFERRED: it reads first (the flow run a task run
belongs to, the variable it updates) and takes the write lock only at its first write. When
another writer committed in between, SQLite cannot wait for the lock (the transaction's snapshot
is stale) and answers "database is locked" at once, whatever the busy timeout; Prefect's server
turns that into 503, and Prefect's client waits 2, 4, 8 s before it asks again. Twenty releases at
once met about 60 of these (bench/bench_fleet_scale.py), each pausing one release for seconds.

Here every write transaction begins IMMEDIATE, as Prefect's own row-locking ones already do: it
takes the write lock at BEGIN and so waits its turn (SQLite's busy timeout, 60 s) instead of
failing. Reads outside a transaction are unchanged and, with SQLite's write-ahead log, still run
beside the writer. On Postgres nothing changes.

    python -m sandbox.prefect_server --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction


class WritersTakeTurns(AioSqliteConfiguration):
    """Prefect's SQLite configuration whose write transactions all begin IMMEDIATE."""

    @asynccontextmanager
    async def begin_transaction(
        self, session: AsyncSession, with_for_update: bool = False
    ) -> AsyncGenerator[AsyncSessionTransaction, None]:
        async with super().begin_transaction(session, with_for_update=True) as transaction:
            yield transaction


def main(argv: list[str]) -> None:
    from prefect.cli import app
    from prefect.server.database.dependencies import set_database_config
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()  # as Prefect reads it to pick its own configuration
    if url.startswith("sqlite"):
        set_database_config(WritersTakeTurns(connection_url=url))
    # In the foreground, with one worker, `prefect server start` serves from this process.
    sys.argv = [sys.argv[0], "server", "start", *argv]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
