"""An async chain serves answers its memory layer holds on the event loop (#14).

During an outage the cache is the hot path; a thread hop per answer (``asyncio.to_thread``)
cost a p99 of 67 ms at 32 concurrent requests. The default executor is made to refuse work,
so a hop anywhere on that path fails the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import openai
import pytest

from fallbackchain import AsyncFallbackChain
from fallbackchain.testing import Fault, FaultServer

from .conftest import make_config, user


class RefusingExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread hop on the cache's hot path")


@pytest.mark.parametrize("memory_items", [256, 0])
def test_memory_hits_are_served_on_the_loop_and_disk_hits_in_a_thread(
    server: FaultServer, tmp_path: Path, memory_items: int
) -> None:
    config = make_config(
        tmp_path, server.base_url, breaker__fail_max=1, cache__memory_items=memory_items
    )

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
        async with AsyncFallbackChain(config, client=client) as chain:
            await chain.complete(user("kept"))
            server.default = Fault.status(503)
            for _ in range(2):  # the stream tier's breaker opens, then the completion tier's
                await chain.complete(user("kept"))
            assert set(chain.breaker_states().values()) == {"open"}
            loop = asyncio.get_running_loop()
            loop.set_default_executor(RefusingExecutor())
            if memory_items:
                answers = await asyncio.gather(*(chain.complete(user("kept")) for _ in range(32)))
                assert {a.source for a in answers} == {"cache"}
            else:  # nothing held in memory: the disk is read in a thread, as before
                with pytest.raises(AssertionError, match="thread hop"):
                    await chain.complete(user("kept"))
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())
        await client.close()

    asyncio.run(main())
