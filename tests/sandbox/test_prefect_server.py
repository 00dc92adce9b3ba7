"""The sandbox's Prefect server on SQLite: concurrent writers wait their turn, none is answered 503.

SQLite's own words (https://www.sqlite.org/lang_transaction.html, "Read transactions versus write
transactions"): "If a write statement occurs while a read transaction is active, then the read
transaction is upgraded to a write transaction if possible. If some other database connection has
already modified the database or is already in the process of modifying the database, then upgrading
to a write transaction is not possible and the write statement will fail with SQLITE_BUSY." And:
"IMMEDIATE cause the database connection to start a new write immediately, without waiting for a
write statement. The BEGIN IMMEDIATE might fail with SQLITE_BUSY if another write transaction is
already active on another database connection" - which the busy timeout waits out.

Prefect's server begins its write transactions DEFERRED (they read first: creating a task run reads
its flow run's labels) and answers SQLITE_BUSY with 503. A fleet's releases write at once (task runs,
lock heartbeats, lock releases), and each 503 held a release back 2 s or more. The sandbox's server
(sandbox/prefect_server.py) begins them IMMEDIATE. Here many writers hit the session's server at
once, with no client retries, as plain HTTP: every one must be answered 2xx.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter

import httpx

from harness.faults import prefect_api_headers

TASK_RUNS = 60
VARIABLE_WRITES = 40


async def _writers(api: str) -> tuple[Counter[int], list[str]]:
    headers = prefect_api_headers()
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=100)) as http:
        flow = (await http.post("/flows/", json={"name": f"test-writers-{uuid.uuid4().hex[:8]}"})).json()
        run = (await http.post("/flow_runs/", json={"flow_id": flow["id"], "state": {"type": "RUNNING"}})).json()
        name = f"test_writers_{uuid.uuid4().hex[:8]}"
        await http.post("/variables/", json={"name": name, "value": 0})
        answers: Counter[int] = Counter()
        made: list[str] = []

        async def task_run(i: int) -> None:
            resp = await http.post("/task_runs/", json={
                "flow_run_id": run["id"], "task_key": f"writer-{i}", "dynamic_key": "0", "name": f"writer {i}"})
            answers[resp.status_code] += 1
            if resp.status_code < 300:
                made.append(resp.json()["id"])

        async def beat(i: int) -> None:
            resp = await http.patch(f"/variables/name/{name}", json={"value": i})
            answers[resp.status_code] += 1

        try:
            await asyncio.gather(*(task_run(i) for i in range(TASK_RUNS)),
                                 *(beat(i) for i in range(VARIABLE_WRITES)))
        finally:
            await http.delete(f"/variables/name/{name}")
            await http.delete(f"/flow_runs/{run['id']}")
            await http.delete(f"/flows/{flow['id']}")
        return answers, made


def test_concurrent_writers_on_sqlite_wait_their_turn_and_none_is_answered_503() -> None:
    answers, made = asyncio.run(_writers(os.environ["PREFECT_API_URL"]))
    assert answers[503] == 0, f"the server answered {answers[503]} writes 503 (SQLite busy): {dict(answers)}"
    assert sum(n for code, n in answers.items() if code < 300) == TASK_RUNS + VARIABLE_WRITES, dict(answers)
    assert len(set(made)) == TASK_RUNS
