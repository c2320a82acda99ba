"""A user's-eye use of the public API, checked by ``mypy --strict`` (never executed by pytest)."""

from __future__ import annotations

import openai

from fallbackchain import (
    AllTiersFailedError,
    AsyncFallbackChain,
    Attempt,
    BreakerState,
    ChainConfig,
    ChainEvent,
    ChainResponse,
    FallbackChain,
    load_config,
    set_testing,
)
from fallbackchain.breaker import BUSY, BreakerGate


def sync_use(path: str) -> str:
    config: ChainConfig = load_config(path)
    with FallbackChain(config, client=openai.OpenAI(api_key="k")) as chain:
        with chain.stream(messages=[{"role": "user", "content": "hi"}], temperature=0) as stream:
            for event in stream:
                kind: str = event.type
                text: str = event.text
                del kind, text
            response: ChainResponse = stream.response
        states: dict[str, BreakerState] = chain.breaker_states()
        del states
        try:
            answer = chain.complete(messages=[{"role": "user", "content": "hi"}], model=None)
        except AllTiersFailedError as exc:
            attempts: tuple[Attempt, ...] = exc.attempts
            return str(len(attempts))
        return answer.text + response.source


async def async_use() -> ChainResponse:
    async with AsyncFallbackChain(ChainConfig(), client=openai.AsyncOpenAI(api_key="k")) as chain:
        async with chain.stream(messages=[{"role": "user", "content": "hi"}]) as stream:
            events: list[ChainEvent] = [event async for event in stream]
            del events
        return await chain.complete(messages=[{"role": "user", "content": "hi"}])


def testing_mode() -> None:
    with set_testing(True):
        pass


def guarded(gate: BreakerGate) -> bool:
    """A caller driving a breaker gate itself: permit, busy, or refused."""
    permit = gate.acquire()
    if permit is None or permit is BUSY:
        return False
    limited: bool = permit.limited
    permit.first_content()
    permit.success()
    return limited


def back_off(gate: BreakerGate, seconds: float) -> None:
    """A caller's own retry loop: sleep before the next try, unless the breaker opens."""
    gate.sleep_unless_open(seconds)


async def aback_off(gate: BreakerGate, seconds: float) -> None:
    await gate.asleep_unless_open(seconds)
