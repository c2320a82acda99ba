"""The request flow and the hedge race's rules on their own: every decision, no I/O (#12).

As tenacity tests its retry state: a tiny driver plays a script of what each step gives (an
answer, or an error), and the steps the flow asks for are compared with a table. What is
decided here (how a permit is reported, what is shown, when the cache is read and written,
what the caller sees) is everything the sync and async drivers do not decide. Real breaker
gates (in-memory), a fake clock, jitter fixed at 0.5.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from fallbackchain import (
    ChainClosedError,
    ChainConfig,
    ChainResponse,
    FirstTokenTimeoutError,
    RetryConfig,
    ServerError,
    UpstreamConnectionError,
)
from fallbackchain._hooks import Hooks
from fallbackchain.cache import CachedAnswer
from fallbackchain.chain import CHAT, call_options
from fallbackchain.chain._core import RequestRun
from fallbackchain.chain._flow import Steps, request_flow
from fallbackchain.chain._race import Race
from fallbackchain.chain._request import ResponseSlot, prepare
from fallbackchain.chain._steps import (
    Acquire,
    AwaitSlot,
    CloseStream,
    FetchWhole,
    OpenStream,
    ReadCache,
    ReadStream,
    Report,
    Show,
    Sleep,
    WriteCache,
)

from .conftest import FakeClock
from .test_core import BACKUP, R503, make_tiers

OK = "ok"
DROP = UpstreamConnectionError("connection dropped")


class Mistake(Exception):
    """The caller's own error (not an upstream's): raised unchanged, counted by no breaker."""


def answer(text: str = "hi") -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    )


class Player:
    """Plays one request's flow: each tier answers from its own list in ``script``."""

    def __init__(
        self,
        config: ChainConfig,
        script: dict[str, list[Any]],
        *,
        cached: str | None = None,
        closed: bool = False,
        **options: Any,
    ) -> None:
        self.clock = FakeClock()
        self.script = {tier: list(outcomes) for tier, outcomes in script.items()}
        self.cached = cached
        self.closed = closed
        own = call_options(
            config,
            options.get("deadline"),
            options.get("max_attempts"),
            options.get("cache", "use"),
            options.get("fallbacks", True),
        )
        self.request = prepare(
            CHAT, {"messages": [{"role": "user", "content": "q"}]}, default_model="m", options=own
        )
        self.run = RequestRun(
            make_tiers(config, self.clock), config, clock=self.clock, random=lambda: 0.5
        )
        self.slot = ResponseSlot(CHAT)
        self.log: list[str] = []

    def play(self) -> list[str]:
        def check_open() -> None:
            if self.closed:
                raise ChainClosedError("closed")

        flow = request_flow(
            self.run,
            self.request,
            self.slot,
            hooks=Hooks(),
            closed=lambda: self.closed,
            check_open=check_open,
        )
        steps = Steps(flow)
        try:
            for step in steps:
                try:
                    steps.done(self.perform(step))
                except BaseException as exc:
                    steps.failed(exc)
        except BaseException as exc:
            self.log.append(f"raise {type(exc).__name__}")
        return self.log

    def outcome(self, tier: str) -> Any:
        outcomes = self.script.get(tier, [])
        return outcomes.pop(0) if outcomes else OK

    def perform(self, step: Any) -> Any:
        if isinstance(step, Sleep):
            self.log.append(f"sleep {step.seconds:g}")
            self.clock.advance(step.seconds)
            return None
        if isinstance(step, AwaitSlot):
            self.log.append("await slot")
            return None
        if isinstance(step, Acquire):
            return step.tier.gate.acquire()
        if isinstance(step, OpenStream):
            self.log.append(f"open {step.attempt.tier.name}")
            outcome = self.outcome(step.attempt.tier.name)
            if isinstance(outcome, BaseException) and outcome is not DROP:
                raise outcome
            return outcome  # the "opened stream": what ReadStream will meet
        if isinstance(step, CloseStream):
            self.log.append(f"close {step.opened}")
            return None
        if isinstance(step, ReadStream):
            self.log.append("read")
            if isinstance(step.opened, BaseException):
                raise step.opened  # a drop after content
            return answer()
        if isinstance(step, FetchWhole):
            self.log.append(f"fetch {step.attempt.tier.name}")
            outcome = self.outcome(step.attempt.tier.name)
            if isinstance(outcome, BaseException):
                raise outcome
            return answer()
        if isinstance(step, Report):
            self.log.append(step.outcome)
            if step.outcome == "release":
                return step.permit.release()
            return step.permit.success() if step.outcome == "success" else step.permit.failure()
        if isinstance(step, Show):
            self.log.append("show " + ",".join(sorted({e.source for e in step.events})))
            return None
        if isinstance(step, ReadCache):
            self.log.append("read cache")
            if self.cached is None:
                return None
            return CachedAnswer(answer(self.cached), stored_at=0.0, age=5.0)
        if isinstance(step, WriteCache):
            self.log.append("write cache")
            return True
        raise AssertionError(f"unexpected step {step!r}")


DEFAULTS = ChainConfig()
WITH_BACKUP = ChainConfig(fallbacks=(BACKUP,))
LIVE = ["open stream", "read", "success", "write cache", "show stream"]

TABLE: list[tuple[str, ChainConfig, dict[str, list[Any]], dict[str, Any], list[str]]] = [
    ("healthy: shown, then stored", DEFAULTS, {}, {}, LIVE),
    (
        "a 503: reported as a failure, retried after backoff",
        DEFAULTS,
        {"stream": [R503]},
        {},
        ["open stream", "failure", "sleep 0.25", *LIVE],
    ),
    (
        "a drop after content: a failure; the retry's answer is shown",
        DEFAULTS,
        {"stream": [DROP]},
        {},
        ["open stream", "read", "failure", "sleep 0.25", *LIVE],
    ),
    (
        "the caller's own error: released, counted by no breaker, raised unchanged",
        DEFAULTS,
        {"stream": [Mistake("bad request")]},
        {},
        ["open stream", "release", "raise Mistake"],
    ),
    (
        "a cancellation: released, then raised",
        DEFAULTS,
        {"stream": [asyncio.CancelledError()]},
        {},
        ["open stream", "release", "raise CancelledError"],
    ),
    (
        "an error once the chain is closed: released, ChainClosedError",
        DEFAULTS,
        {"stream": [R503]},
        {"closed_after_acquire": True},
        ["open stream", "release", "raise ChainClosedError"],
    ),
    (
        "every tier failed, the cache has an answer: shown from the cache",
        ChainConfig(retry=RetryConfig(max_attempts=1)),
        {"stream": [ServerError("HTTP 500", status_code=500, should_retry=False)]},
        {"cached": "old"},
        ["open stream", "failure", "read cache", "show cache"],
    ),
    (
        "every tier failed and the cache is empty: AllTiersFailedError",
        ChainConfig(retry=RetryConfig(max_attempts=1)),
        {"stream": [ServerError("HTTP 500", status_code=500, should_retry=False)]},
        {},
        ["open stream", "failure", "read cache", "raise AllTiersFailedError"],
    ),
    (
        "cache='off': neither read nor written",
        ChainConfig(retry=RetryConfig(max_attempts=1)),
        {"stream": [ServerError("HTTP 500", status_code=500, should_retry=False)]},
        {"cache": "off", "cached": "old"},
        ["open stream", "failure", "raise AllTiersFailedError"],
    ),
    (
        "cache='refresh': a live answer is stored",
        DEFAULTS,
        {},
        {"cache": "refresh"},
        LIVE,
    ),
    (
        "cache='off': a live answer is not stored",
        DEFAULTS,
        {},
        {"cache": "off"},
        ["open stream", "read", "success", "show stream"],
    ),
    (
        "a silent stream: the next route's answer",
        WITH_BACKUP,
        {"stream": [FirstTokenTimeoutError("silent")]},
        {},
        ["open stream", "failure", "open backup", "read", "success", "write cache", "show backup"],
    ),
]


@pytest.mark.parametrize(
    ("config", "script", "options", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_the_flow_asks_for_these_steps(
    config: ChainConfig, script: dict[str, list[Any]], options: dict[str, Any], expected: list[str]
) -> None:
    closed_after_acquire = options.pop("closed_after_acquire", False)
    player = Player(config, script, **options)
    if closed_after_acquire:
        perform = player.perform

        def closing(step: Any) -> Any:
            if isinstance(step, OpenStream):
                player.closed = True
            return perform(step)

        player.perform = closing  # type: ignore[method-assign]
    assert player.play() == expected


def test_a_stream_closed_from_elsewhere_ends_the_request_neutral() -> None:
    """The consumer closed the stream from another thread or task: the read that failed for
    it is no upstream fault; the permit is released, no retry, the flow ends as a close()."""
    player = Player(DEFAULTS, {"stream": [DROP]})
    perform = player.perform

    def closing(step: Any) -> Any:
        if isinstance(step, ReadStream):
            player.slot.cancelled = True  # what a close() from elsewhere sets, before the read fails
        return perform(step)

    player.perform = closing  # type: ignore[method-assign]
    assert player.play() == ["open stream", "read", "release", "raise GeneratorExit"]
    assert player.slot.response is None


def test_a_stream_opened_while_the_consumer_closed_is_closed_unread() -> None:
    """The close came while the attempt was opening (no stream to close yet): what it opened is
    closed at once, not left holding its connection until collected; then, as above."""
    player = Player(DEFAULTS, {})
    perform = player.perform

    def closing(step: Any) -> Any:
        opened = perform(step)
        if isinstance(step, OpenStream):
            player.slot.cancelled = True  # a close() from elsewhere, while this one opened
        return opened

    player.perform = closing  # type: ignore[method-assign]
    assert player.play() == ["open stream", "close ok", "release", "raise GeneratorExit"]
    assert player.slot.response is None


def test_a_live_answer_lands_in_the_slot_with_its_attempts() -> None:
    player = Player(DEFAULTS, {"stream": [R503]})
    player.play()
    response = player.slot.response
    assert isinstance(response, ChainResponse)
    assert (response.source, response.text) == ("stream", "hi")
    assert [a.tier for a in response.attempts] == ["stream", "stream"]


def test_a_cached_answer_bills_nothing() -> None:
    config = ChainConfig(retry=RetryConfig(max_attempts=1))
    failure = ServerError("HTTP 500", status_code=500, should_retry=False)
    player = Player(config, {"stream": [failure]}, cached="old")
    player.play()
    response = player.slot.response
    assert response is not None and response.source == "cache" and response.text == "old"
    assert response.cache_age == 5.0
    assert response.completion.usage is not None
    assert response.completion.usage.total_tokens == 0


def test_whole_first_fetches_a_completion() -> None:
    player = Player(DEFAULTS, {})
    player.request = prepare(
        CHAT,
        {"messages": [{"role": "user", "content": "q"}]},
        default_model="m",
        whole_first=True,
    )
    player.run = RequestRun(
        make_tiers(DEFAULTS, player.clock),
        DEFAULTS,
        clock=player.clock,
        random=lambda: 0.5,
        whole_first=True,
    )
    assert player.play() == ["fetch completion", "success", "write cache", "show completion"]


# -- the hedge race ------------------------------------------------------------------------

HEDGED = ChainConfig(retry=RetryConfig(hedge_after=1.0), fallbacks=(BACKUP,))


def race() -> tuple[Race, Any, Any]:
    """A race whose first attempt (``stream``) went silent and was hedged (``backup``)."""
    clock = FakeClock()
    tiers = make_tiers(HEDGED, clock)
    run = RequestRun(tiers, HEDGED, clock=clock, random=lambda: 0.5)
    step = run.next_step()
    assert isinstance(step, Acquire)
    first = run.start_attempt(step, step.tier.gate.acquire())
    assert first is not None
    contest = Race(run, first, run.watch(first))
    target = contest.hedge()
    assert target is not None
    hedge = contest.start_hedge(target, target.tier.gate.acquire(), None)
    assert hedge is not None
    return contest, contest.first, hedge


def judged(contest: Race, ended: list[tuple[Any, object]], running: list[Any]) -> list[str]:
    verdict = contest.judge(ended, running)
    out = [
        f"{d.entrant.attempt.tier.name} {d.outcome}" + (" (close)" if d.opened else "")
        for d in verdict.dismissed
    ]
    if verdict.end is not None:
        what = verdict.end.stream
        shown = type(what).__name__ if isinstance(what, BaseException) else what
        out.append(f"end {verdict.end.attempt.tier.name}: {shown}")
    return out


OPENED = "opened"

RACE_TABLE: list[tuple[str, list[tuple[str, object]], list[str], list[str]]] = [
    ("the first shows content: it goes on", [("first", OPENED)], ["hedge"], ["end stream: opened"]),
    ("the hedge shows content: it goes on", [("hedge", OPENED)], ["first"], ["end backup: opened"]),
    (
        "a tie: the first wins, the hedge's stream is closed and released",
        [("hedge", OPENED), ("first", OPENED)],
        [],
        ["backup release (close)", "end stream: opened"],
    ),
    (
        "the first fails while the hedge runs: a failure, the race goes on",
        [("first", R503)],
        ["hedge"],
        ["stream failure"],
    ),
    (
        "the hedge fails and the first fails last: the first goes on with its error",
        [("first", R503), ("hedge", R503)],
        [],
        ["backup failure", "end stream: ServerError"],
    ),
    (
        "the hedge's caller error is neutral: released, the race goes on",
        [("hedge", Mistake("refused"))],
        ["first"],
        ["backup release"],
    ),
    (
        "the first's caller error ends the race: raised, as without a race",
        [("first", Mistake("bad request"))],
        ["hedge"],
        ["end stream: Mistake"],
    ),
    (
        "a cancellation ends the race at once",
        [("first", asyncio.CancelledError())],
        ["hedge"],
        ["end stream: CancelledError"],
    ),
]


@pytest.mark.parametrize(
    ("ended", "running", "expected"),
    [row[1:] for row in RACE_TABLE],
    ids=[row[0] for row in RACE_TABLE],
)
def test_the_race_judges_each_batch_of_ended_entrants(
    ended: list[tuple[str, object]], running: list[str], expected: list[str]
) -> None:
    contest, first, hedge = race()
    who = {"first": first, "hedge": hedge}
    assert (
        judged(contest, [(who[w], outcome) for w, outcome in ended], [who[w] for w in running])
        == expected
    )


def test_the_loser_still_running_is_recorded_and_the_winner_adopted() -> None:
    contest, first, hedge = race()
    contest.judge([(hedge, OPENED)], [first])
    assert [(a.tier, a.error) for a in contest.run.attempts] == [("stream", "lost a hedge race")]
    # the hedge took over: the request goes on at its tier
    step = contest.run.next_step()
    assert isinstance(step, Acquire) and step.tier.name == "backup"


def test_the_watch_says_once_when_the_first_content_came() -> None:
    """The wait that brought the first content, and no other: a trial is vouched for then."""
    clock = FakeClock()
    run = RequestRun(make_tiers(DEFAULTS, clock), DEFAULTS, clock=clock)
    step = run.next_step()
    assert isinstance(step, Acquire)
    attempt = run.start_attempt(step, step.tier.gate.acquire())
    assert attempt is not None
    watch = run.watch(attempt)
    now = clock()
    firsts = [
        watch.after_wait(now, now + 0.1, got_content=False),
        watch.after_wait(now + 0.1, now + 0.2, got_content=True),
        watch.after_wait(now + 0.2, now + 0.3, got_content=True),
    ]
    assert firsts == [False, True, False]
    assert watch.time_to_first_token() == pytest.approx(0.2)
