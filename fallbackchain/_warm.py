"""Warm the fallback cache from a list of prompts, before an outage rather than during one.

:func:`warm` (threads) and :func:`awarm` (asyncio) send each prompt through the chain's own
live path (:meth:`FallbackChain.complete`: breakers, retries, write-through), so a warmed entry
sits under exactly the key the chain looks up at run time.

What a caller can rely on:

* **Input.** Prompts come from a JSON Lines file or from code. Each line is either the keyword
  arguments of ``chat.completions.create`` (``messages``, optional ``model`` (default: the
  config's), and any other ``create`` argument except ``stream``, ``stream_options`` and
  ``timeout``, which the chain sets) or the shorthand ``{"prompt": "text"}`` (one user
  message). Blank lines and lines starting with ``#`` are skipped. Every number must be finite
  and every string valid Unicode (no lone surrogate), or no request could carry it.
  :func:`parse_prompts` is the one pure function that validates them, for the dry run and the
  real run alike; every bad line becomes a :class:`LineError`
  naming the file and line, and the valid lines still run unless ``strict=True`` (then
  :class:`InputFileError` is raised before anything is sent).
* **Only live answers count.** A prompt is *warmed* when a live tier answered it (and the chain
  wrote the answer through). An answer served from the cache, :class:`AllTiersFailedError`, an
  API rejection (``openai.BadRequestError`` and the like) or any other error makes that prompt
  *failed* (logged on the ``fallbackchain.warm`` logger with its line number); the run goes on.
* **Skip and resume.** A prompt whose answer is already cached is *skipped* unless
  ``refresh=True``; a repeated prompt is skipped too. Every answer is written through as it
  arrives, so an interrupted run (Ctrl-C, a kill, an exception from ``progress``) loses nothing
  it wrote, and running it again picks up where it stopped.
* **Nothing gets worse.** Only complete live answers are ever written. With ``refresh=True`` a
  new answer cut short (``finish_reason == "length"``) never replaces a cached answer that was
  not: the old entry is put back with its original age and the prompt counts as failed.
* **Never hammer.** At most ``concurrency`` requests are in flight. When every live tier's
  breaker is open, nothing is sent until the breaker's ``reset_timeout`` has passed; then one
  request at a time probes the API, and full concurrency resumes after the first live answer.
  Prompts that failed only because of the outage are tried again after the pause. A request
  that failed after ``429`` answers with ``Retry-After`` holds back new requests for that long
  (at most ``max(retry.max_retry_after, breaker.reset_timeout)``). If the API stays down for
  ``max_wait`` seconds (default: 10 times the longest breaker ``reset_timeout``) the remaining
  prompts are failed without being sent. Waits use the chain's injected clock and sleep; in
  testing mode (:func:`~fallbackchain.set_testing`) they are skipped and nothing is retried.
* **Dry run.** ``dry_run=True`` validates and looks up every prompt but sends nothing:
  ``WarmReport.planned`` lists what would be sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import difflib
import inspect
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeVar

import openai
from openai.resources.chat.completions import Completions
from openai.types.chat import ChatCompletion

from ._errors import (
    AllTiersFailedError,
    BreakerOpenError,
    FallbackChainError,
    QuotaExceededError,
    RateLimitedError,
)
from ._results import Attempt, ChainResponse
from ._timing import Clock, is_testing
from .cache import CachedAnswer, InputFileError, LineError, read_jsonl
from .chain import AsyncFallbackChain, FallbackChain, Sleep

__all__ = [
    "ALLOWED_KEYS",
    "WARM_RECORD",
    "InputFileError",
    "LineError",
    "WarmOutcome",
    "WarmProgress",
    "WarmReport",
    "WarmRequest",
    "awarm",
    "load_prompts",
    "parse_prompt",
    "parse_prompts",
    "warm",
]

_log = logging.getLogger("fallbackchain.warm")

IN_CODE: Final = "<prompts>"
"""The ``file`` of prompts given in code rather than read from a file."""

_SET_BY_CHAIN: Final = frozenset({"stream", "stream_options", "timeout"})
ALLOWED_KEYS: Final[frozenset[str]] = frozenset(
    name
    for name in inspect.signature(Completions.create).parameters
    if name != "self" and name not in _SET_BY_CHAIN
) | {"prompt"}
"""Keys a prompt line may have: ``prompt``, or ``chat.completions.create``'s arguments minus
``stream``, ``stream_options`` and ``timeout``."""

_MAX_TRIES: Final = 10  # sends of one prompt (outage retries included) before it counts failed
WARM_RECORD: Final = "fallbackchain_warm_item"  # LogRecord attribute marking per-prompt lines

WarmOutcome = Literal["warmed", "skipped", "failed", "planned"]
"""What happened to one prompt; ``planned`` only in a dry run (it would be sent)."""


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """One validated prompt: ``params`` are the ``create`` keyword arguments.

    ``params`` always has ``messages``; ``model`` only when the line gave one. ``line`` is the
    1-based line number in ``file`` (for prompts given in code: the position, and
    ``file == "<prompts>"``).
    """

    line: int
    params: Mapping[str, Any]
    file: str = IN_CODE

    @property
    def messages(self) -> Sequence[Any]:
        """The messages to send."""
        messages: Sequence[Any] = self.params["messages"]
        return messages

    @property
    def model(self) -> str | None:
        """The model the line asked for, or ``None`` for the chain's configured model."""
        model = self.params.get("model")
        return model if isinstance(model, str) else None

    @property
    def options(self) -> dict[str, Any]:
        """Every parameter except ``messages`` and ``model``."""
        return {k: v for k, v in self.params.items() if k not in ("messages", "model")}

    @property
    def where(self) -> str:
        """``"FILE:LINE"``."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class WarmProgress:
    """Reported once per prompt as it is settled (from the thread or task running the warm).

    ``done`` of ``total`` valid prompts are settled; ``warmed``, ``skipped`` and ``failed`` are
    the running counts (``planned`` ones count as neither in a dry run). ``error`` is set for
    a failed prompt, ``note`` says why one was skipped.
    """

    done: int
    total: int
    request: WarmRequest
    outcome: WarmOutcome
    warmed: int
    skipped: int
    failed: int
    tokens: int = 0
    error: LineError | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class WarmReport:
    """The summary of one run.

    ``invalid`` counts bad input lines; ``errors`` lists them and every failed prompt, in line
    order. ``tokens`` is the total ``usage.total_tokens`` of the warmed answers; ``seconds`` the
    wall time of the run. ``planned`` (dry run only) lists the prompts that would be sent.
    """

    warmed: int
    skipped: int
    failed: int
    invalid: int
    tokens: int
    seconds: float
    errors: tuple[LineError, ...] = ()
    planned: tuple[WarmRequest, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed and every line was valid."""
        return self.failed == 0 and self.invalid == 0


# --------------------------------------------------------------------------------------------
# Parsing (pure)
# --------------------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def _unknown_keys_message(unknown: Sequence[str]) -> str:
    parts = []
    for key in unknown:
        if key in _SET_BY_CHAIN:
            parts.append(f"{key!r} (set by the chain; remove it)")
            continue
        close = difflib.get_close_matches(key, sorted(ALLOWED_KEYS), n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    return f"unknown {noun} {', '.join(parts)}"


class _BadPromptError(ValueError):
    """A prompt is not valid; the message is the one-line reason."""


def parse_prompt(value: Any, *, file: str = IN_CODE, line: int = 1) -> WarmRequest:
    """Validate one prompt (a parsed JSON value) into a :class:`WarmRequest`.

    Raises :class:`ValueError` with a one-line reason (without the file and line) when it is not
    an object, has unknown keys, has both or neither of ``prompt`` and ``messages``, when
    ``prompt``, ``messages`` or ``model`` has the wrong shape, or when any value is a number
    that is not finite or a string with a lone surrogate (the reason names where it is).
    """
    if not isinstance(value, Mapping):
        raise _BadPromptError(f"expected a JSON object, got {_json_type(value)}")
    keys = [k for k in value if not isinstance(k, str) or k not in ALLOWED_KEYS]
    if keys:
        raise ValueError(_unknown_keys_message([str(k) for k in keys]))
    params = dict(value)
    if "prompt" in params and "messages" in params:
        raise ValueError("give either 'prompt' or 'messages', not both")
    if "prompt" in params:
        prompt = params.pop("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"'prompt' must be a non-empty string, got {_json_type(prompt)}")
        params["messages"] = [{"role": "user", "content": prompt}]
    elif "messages" not in params:
        raise ValueError("needs 'messages' (a list of messages) or 'prompt' (a string)")
    messages = params["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array of message objects")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _BadPromptError(f"messages[{index}] must be an object, got {_json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{index}] needs a 'role' string")
    if "model" in params:
        model = params["model"]
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"'model' must be a non-empty string, got {_json_type(model)}")
    _check_sendable(value)
    return WarmRequest(line=line, params=params, file=file)


def _path_step(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"  # ASCII-escaped: a lone surrogate prints as \udxxx


def _unsendable(value: object) -> str | None:
    """Why ``value`` cannot go into a request (a phrase), or None when it can."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"is out of range ({value!r}): a request can only carry finite numbers"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # only a lone surrogate cannot be UTF-8
            return (
                f"contains {value[exc.start]!a} at position {exc.start}, a lone "
                "surrogate: not valid Unicode, so the request could not be sent"
            )
    return None


def _check_sendable(value: Mapping[Any, Any]) -> None:
    """Raise ValueError when a string or number anywhere in ``value`` cannot be sent.

    The real run would fail such a prompt (the SDK cannot encode it), so the dry run and the
    real run both refuse it here, naming where it is. Iterative, so a deeply nested value
    cannot exhaust the stack.
    """
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        children: list[tuple[object, object]] = []
        if isinstance(item, Mapping):
            for key in item:
                problem = _unsendable(key)
                if problem is not None:
                    where = f"a key in '{path}'" if path else "a top-level key"
                    raise ValueError(f"{where} {problem}")
            children = list(item.items())
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        else:
            problem = _unsendable(item)
            if problem is not None:
                raise ValueError(f"'{path}' {problem}")
        stack.extend((_path_step(path, key), child) for key, child in reversed(children))


def parse_prompts(
    lines: Iterable[str], *, file: str = IN_CODE
) -> tuple[list[WarmRequest], list[LineError]]:
    """Validate JSON Lines text: the valid requests, and one :class:`LineError` per bad line.

    Pure: reads nothing but ``lines``. Blank lines and ``#`` comments are skipped.
    """
    return _collect(read_jsonl(lines, name=file), file)


def load_prompts(path: str | os.PathLike[str]) -> tuple[list[WarmRequest], list[LineError]]:
    """:func:`parse_prompts` for a file (read as UTF-8 line by line).

    Raises :class:`InputFileError` (a one-line message naming the file) when it is missing,
    a directory, or unreadable.
    """
    file = os.fspath(path)
    return _collect(read_jsonl(path, name=file), file)


def _collect(
    items: Iterable[tuple[int, Any] | LineError], file: str
) -> tuple[list[WarmRequest], list[LineError]]:
    requests: list[WarmRequest] = []
    errors: list[LineError] = []
    for item in items:
        if isinstance(item, LineError):
            errors.append(item)
            continue
        line, value = item
        try:
            requests.append(parse_prompt(value, file=file, line=line))
        except ValueError as exc:
            errors.append(LineError(file, line, str(exc)))
    return requests, errors


PromptSource = Iterable[WarmRequest | Mapping[str, Any]] | str | os.PathLike[str]
"""A prompts file path, or prompts in code (:class:`WarmRequest` values or mappings)."""


def _resolve(prompts: PromptSource) -> tuple[list[WarmRequest], list[LineError]]:
    if isinstance(prompts, str | os.PathLike):
        return load_prompts(prompts)
    requests: list[WarmRequest] = []
    errors: list[LineError] = []
    for index, prompt in enumerate(prompts, start=1):
        if isinstance(prompt, WarmRequest):
            try:  # built by hand, perhaps: the same check a parsed line passed
                _check_sendable(prompt.params)
            except ValueError as exc:
                errors.append(LineError(prompt.file, prompt.line, str(exc)))
            else:
                requests.append(prompt)
            continue
        try:
            requests.append(parse_prompt(prompt, line=index))
        except ValueError as exc:
            errors.append(LineError(IN_CODE, index, str(exc)))
    return requests, errors


def _strict_error(errors: Sequence[LineError]) -> InputFileError:
    more = f" (and {len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
    return InputFileError(
        f"{errors[0]}{more}; nothing was sent (strict)", file=errors[0].file, errors=errors
    )


# --------------------------------------------------------------------------------------------
# One request, and what its outcome means
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    request: WarmRequest
    key: str | None = None
    looked_up: bool = False
    old: CachedAnswer | None = None
    tries: int = 0


@dataclass(frozen=True, slots=True)
class _Result:
    warmed: bool
    tokens: int = 0
    message: str | None = None
    attempts: tuple[Attempt, ...] = ()
    client_error: bool = False
    downgraded: bool = False


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failed_attempts(attempts: Sequence[Attempt]) -> str:
    return "; ".join(f"{a.tier}: {a.error}" for a in attempts if a.error) or "no attempt"


def _rank(completion: ChatCompletion) -> int:
    """2 for an answer that ended on its own, 1 when any choice was cut short by a limit."""
    return 1 if any(c.finish_reason == "length" for c in completion.choices) else 2


def _from_response(response: ChainResponse, old: CachedAnswer | None) -> _Result:
    if response.source == "cache":
        return _Result(
            False,
            message="live tiers failed, so the chain answered from the cache and nothing was "
            f"refreshed ({_short(_failed_attempts(response.attempts))})",
            attempts=response.attempts,
        )
    usage = response.completion.usage
    tokens = usage.total_tokens if usage is not None else 0
    if old is not None and _rank(old.completion) > _rank(response.completion):
        return _Result(
            False,
            tokens=tokens,
            message="the new answer was cut short (finish_reason 'length'); kept the cached answer",
            attempts=response.attempts,
            downgraded=True,
        )
    return _Result(True, tokens=tokens, attempts=response.attempts)


def _from_error(exc: Exception) -> _Result:
    if isinstance(exc, AllTiersFailedError):
        return _Result(False, message=_short(str(exc)), attempts=exc.attempts)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message")
        message = detail if isinstance(detail, str) and detail else exc.message
        return _Result(
            False,
            message=_short(f"rejected by the API: HTTP {exc.status_code}: {message}"),
            client_error=True,
        )
    if isinstance(exc, FallbackChainError | TypeError | ValueError):
        return _Result(False, message=_short(f"{type(exc).__name__}: {exc}"), client_error=True)
    _log.debug("unexpected error while warming", exc_info=exc)
    return _Result(False, message=_short(f"unexpected {type(exc).__name__}: {exc}"))


def _restore_if_worse(
    chain: FallbackChain | AsyncFallbackChain, item: _Item, r: _Result, response: ChainResponse
) -> _Result:
    """Put a better cached answer back after a refresh that brought a worse one; returns ``r``.

    A refresh that brought an answer identical to the cached one restamps it: the cache
    would otherwise keep the identical entry with its old age.
    """
    if item.old is None or item.key is None:
        return r
    if r.downgraded:
        chain.cache.put(item.key, item.old.completion, stored_at=item.old.stored_at)
    elif r.warmed:
        chain.cache.put(item.key, response.completion, rewrite=True)
    return r


def _ask_sync(chain: FallbackChain, item: _Item) -> _Result:
    request = item.request
    try:
        response = chain.complete(request.messages, request.model, **request.options)
    except Exception as exc:  # noqa: BLE001 - one prompt must never end the run
        return _from_error(exc)
    return _restore_if_worse(chain, item, _from_response(response, item.old), response)


async def _ask_async(chain: AsyncFallbackChain, item: _Item) -> _Result:
    request = item.request
    try:
        response = await chain.complete(request.messages, request.model, **request.options)
    except Exception as exc:  # noqa: BLE001 - one prompt must never end the run
        return _from_error(exc)
    result = _from_response(response, item.old)
    return await asyncio.to_thread(_restore_if_worse, chain, item, result, response)


# --------------------------------------------------------------------------------------------
# Pacing: concurrency, open breakers, Retry-After
# --------------------------------------------------------------------------------------------

_GIVE_UP: Final = "give-up"


class _Pacer:
    """Decides when the next request may be sent. Pure policy over the chain's breaker states."""

    def __init__(
        self,
        chain: FallbackChain | AsyncFallbackChain,
        *,
        concurrency: int,
        clock: Clock,
        max_wait: float,
    ) -> None:
        self._chain = chain
        self._concurrency = concurrency
        self._clock = clock
        self.max_wait = max_wait
        self._resets = _reset_timeouts(chain)
        self._hold_cap = max(chain.config.retry.max_retry_after, *self._resets.values())
        self._opened: dict[str, float] = {}  # when each open breaker was (last) seen to open
        self._hold_until = -math.inf
        self.outage_since: float | None = None
        self._announced = False

    def _observe(self, now: float, tried: Iterable[str] = ()) -> bool:
        """Track open breakers; True when every live tier's breaker is open."""
        states = self._chain.breaker_states()
        tried = set(tried)
        for name, state in states.items():
            if state == "open":
                # A real attempt at an open tier was its probe, which re-opened it just now.
                if name not in self._opened or name in tried:
                    self._opened[name] = now
            else:
                self._opened.pop(name, None)
        return bool(states) and all(state == "open" for state in states.values())

    def decide(self, in_flight: int) -> float | str | None:
        """``None``: send now; a number: wait that long (or for a request to finish)."""
        now = self._clock()
        all_open = self._observe(now)
        if all_open and self.outage_since is None:
            self.outage_since = now
        if self.outage_since is not None and now - self.outage_since >= self.max_wait:
            return _GIVE_UP
        limit = 1 if self.outage_since is not None else self._concurrency
        if in_flight >= limit:
            return math.inf
        wait = self._hold_until - now
        if all_open:  # until the first tier may take a probe
            reopen = min(at + self._resets.get(name, 0.0) for name, at in self._opened.items())
            wait = max(wait, reopen - now)
        if wait <= 0 or is_testing():
            return None
        if self.outage_since is not None:
            wait = min(wait, self.outage_since + self.max_wait - now)
            if not self._announced:
                self._announced = True
                _log.warning(
                    "every live tier's breaker is open: sending nothing for %.3gs, then one "
                    "request at a time until the API answers again",
                    wait,
                )
        return max(wait, 0.0)

    def settled(self, result: _Result) -> bool:
        """Record a finished request; True when it failed only because of an outage."""
        now = self._clock()
        real = [a for a in result.attempts if not isinstance(a.exception, BreakerOpenError)]
        all_open = self._observe(now, {a.tier for a in real})
        if result.warmed or (result.attempts and real and real[-1].exception is None):
            if self.outage_since is not None:
                _log.warning("the API answers again: resuming at full concurrency")
            self.outage_since = None
            self._announced = False
            return False
        waits = [
            a.retry_after
            for a in result.attempts
            if isinstance(a.exception, RateLimitedError)
            and not isinstance(a.exception, QuotaExceededError)
            and a.retry_after is not None
        ]
        if waits:
            hold = min(max(waits), self._hold_cap)
            _log.info("rate limited: holding new requests back for %.3gs (Retry-After)", hold)
            self._hold_until = max(self._hold_until, now + hold)
        if result.client_error or not result.attempts:
            return False
        return all_open or not real


# --------------------------------------------------------------------------------------------
# One run: the queue, the tally, progress (shared by the sync and async drivers)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ItemStep:
    """A step about one prompt."""

    item: _Item


class _LookUp(_ItemStep):
    """Read the cache for ``item.key``, then tell :meth:`_Run.looked_up` what was there."""

    __slots__ = ()


class _Send(_ItemStep):
    """Start asking the chain for ``item`` (it is in flight until collected)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Collect:
    """Wait for a request in flight to finish, then hand what finished to :meth:`_Run.collect`.

    ``timeout``: the longest wait in seconds (``None``: no limit).
    """

    timeout: float | None


_Step = _LookUp | _Send | Sleep | _Collect  # Sleep: the chain core's, nothing in flight


class _Finished(Protocol):
    """A finished request in flight: a thread's future or an asyncio task."""

    def result(self) -> _Result: ...


_F = TypeVar("_F", bound=_Finished)


@dataclass(slots=True)
class _Tally:
    warmed: int = 0
    skipped: int = 0
    failed: int = 0
    tokens: int = 0
    done: int = 0
    errors: list[LineError] = field(default_factory=list)
    planned: list[WarmRequest] = field(default_factory=list)


class _Run:
    def __init__(
        self,
        chain: FallbackChain | AsyncFallbackChain,
        requests: Sequence[WarmRequest],
        invalid: Sequence[LineError],
        *,
        concurrency: int,
        refresh: bool,
        dry_run: bool,
        progress: Callable[[WarmProgress], None] | None,
        clock: Clock,
        max_wait: float,
    ) -> None:
        self.chain = chain
        self.total = len(requests)
        self.invalid = list(invalid)
        self.refresh = refresh
        self.dry_run = dry_run
        self.progress = progress
        self.pending: deque[_Item] = deque(_Item(r) for r in requests)
        self.pacer = _Pacer(chain, concurrency=concurrency, clock=clock, max_wait=max_wait)
        self.tally = _Tally()
        self.seen: dict[str, WarmRequest] = {}
        self.gave_up = False
        self.started = time.perf_counter()

    def take(self) -> _Item | None:
        """The next prompt to look up or send; settles repeats and uncacheable ones."""
        while self.pending:
            item = self.pending.popleft()
            if item.looked_up:
                return item
            request = item.request
            try:
                key = self.chain.cache_key(request.messages, request.model, **request.options)
            except (TypeError, ValueError) as exc:
                self.settle(item, "failed", message=f"{type(exc).__name__}: {exc}")
                continue
            if key is None:
                self.settle(item, "failed", message="cannot be cached: a value has no JSON form")
                continue
            first = self.seen.get(key)
            if first is not None:
                self.settle(item, "skipped", note=f"same request as line {first.line}")
                continue
            self.seen[key] = request
            item.key = key
            return item
        return None

    def admit(self, item: _Item, cached: CachedAnswer | None) -> bool:
        """After the cache lookup: True to send ``item``; else it is settled here."""
        item.looked_up = True
        if cached is not None and not self.refresh:
            self.settle(item, "skipped", note="already cached")
            return False
        item.old = cached
        if self.dry_run:
            self.settle(item, "planned")
            return False
        return True

    def push_back(self, item: _Item) -> None:
        self.pending.appendleft(item)

    # The whole loop's decisions; a driver only does the I/O each step names (tenacity's
    # split of ``iter()`` from the sync and async loops), so both drivers behave alike.

    def next_step(self, in_flight: int) -> _Step | None:
        """What the driver does next, with ``in_flight`` requests running; ``None``: done."""
        while True:
            wait: float | None = None
            item = self.take()
            if item is not None:
                if not item.looked_up:
                    return _LookUp(item)
                decision = self.pacer.decide(in_flight)
                if decision is None:
                    return _Send(item)
                self.push_back(item)
                if decision == _GIVE_UP:
                    self.give_up()
                    continue
                wait = float(decision)
            if not in_flight:
                if item is None:
                    return None
                return Sleep(wait or 0.0)
            return _Collect(wait if wait is not None and math.isfinite(wait) else None)

    def looked_up(self, item: _Item, cached: CachedAnswer | None) -> None:
        """After a :class:`_LookUp`: an admitted item is the next one to take."""
        if self.admit(item, cached):
            self.push_back(item)

    def collect(self, in_flight: dict[_F, _Item], done: Container[_F]) -> None:
        """After a :class:`_Collect`: settle the finished requests, in submission order."""
        for request in [f for f in in_flight if f in done]:
            self.finished(in_flight.pop(request), request.result())

    def give_up(self) -> None:
        """Settle every prompt not sent yet as failed (the API stayed down too long)."""
        self.gave_up = True
        message = (
            "not sent: every live tier's breaker stayed open for "
            f"{self.pacer.max_wait:g}s; run again later to warm the rest"
        )
        while self.pending:
            self.settle(self.pending.popleft(), "failed", message=message)

    def finished(self, item: _Item, result: _Result) -> None:
        item.tries += 1
        outage = self.pacer.settled(result)
        if result.warmed:
            self.settle(item, "warmed", tokens=result.tokens)
        elif outage and not self.gave_up and not is_testing() and item.tries < _MAX_TRIES:
            self.push_back(item)  # failed only because the API is down: try again after the wait
        else:
            self.settle(item, "failed", message=result.message or "failed")

    def settle(
        self,
        item: _Item,
        outcome: WarmOutcome,
        *,
        tokens: int = 0,
        message: str | None = None,
        note: str | None = None,
    ) -> None:
        tally = self.tally
        tally.done += 1
        error = None
        if outcome == "warmed":
            tally.warmed += 1
            tally.tokens += tokens
        elif outcome == "skipped":
            tally.skipped += 1
        elif outcome == "planned":
            tally.planned.append(item.request)
        else:
            tally.failed += 1
            request = item.request
            error = LineError(request.file, request.line, f"failed: {message}")
            tally.errors.append(error)
            _log.warning("%s", error, extra={WARM_RECORD: True})
        if self.progress is not None:
            self.progress(
                WarmProgress(
                    done=tally.done,
                    total=self.total,
                    request=item.request,
                    outcome=outcome,
                    warmed=tally.warmed,
                    skipped=tally.skipped,
                    failed=tally.failed,
                    tokens=tokens,
                    error=error,
                    note=note,
                )
            )

    def report(self) -> WarmReport:
        tally = self.tally
        errors = sorted([*self.invalid, *tally.errors], key=lambda e: (e.file, e.line))
        return WarmReport(
            warmed=tally.warmed,
            skipped=tally.skipped,
            failed=tally.failed,
            invalid=len(self.invalid),
            tokens=tally.tokens,
            seconds=time.perf_counter() - self.started,
            errors=tuple(errors),
            planned=tuple(tally.planned),
        )


def _prepare(
    chain: FallbackChain | AsyncFallbackChain,
    requests: list[WarmRequest],
    errors: list[LineError],
    *,
    concurrency: int,
    strict: bool,
) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if not chain.config.cache.enabled:
        raise ValueError(
            "the chain's cache is disabled (cache.enabled = false): warming would store nothing"
        )
    if strict and errors:
        raise _strict_error(errors)
    for error in errors:
        _log.warning("%s", error, extra={WARM_RECORD: True})


def _start(
    chain: FallbackChain | AsyncFallbackChain,
    requests: list[WarmRequest],
    errors: list[LineError],
    *,
    strict: bool,
    concurrency: int,
    refresh: bool,
    dry_run: bool,
    progress: Callable[[WarmProgress], None] | None,
    clock: Clock | None,
    max_wait: float | None,
) -> _Run:
    """Validate the run's settings and set up its shared state (both drivers)."""
    _prepare(chain, requests, errors, concurrency=concurrency, strict=strict)
    return _Run(
        chain,
        requests,
        errors,
        concurrency=concurrency,
        refresh=refresh,
        dry_run=dry_run,
        progress=progress,
        clock=clock or chain.clock,
        max_wait=_max_wait(chain, max_wait),
    )


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


def warm(
    chain: FallbackChain,
    prompts: PromptSource,
    *,
    concurrency: int = 4,
    refresh: bool = False,
    strict: bool = False,
    dry_run: bool = False,
    progress: Callable[[WarmProgress], None] | None = None,
    max_wait: float | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] | None = None,
) -> WarmReport:
    """Answer every prompt through ``chain``'s live tiers so its cache holds the answers.

    ``prompts`` is a JSON Lines file path or an iterable of :class:`WarmRequest` / mappings in
    the file's line format. ``progress`` is called in the calling thread once per prompt; an
    exception it raises (``KeyboardInterrupt`` included) stops the run after the requests in
    flight finish (their answers are kept). ``clock`` and ``sleep`` default to the chain's.
    See the module docstring for skipping, failures, pacing and ``max_wait``.

    Raises :class:`InputFileError` for a missing or unreadable file, or any bad line when
    ``strict``; :class:`ValueError` when ``concurrency < 1`` or the chain's cache is disabled.
    """
    requests, errors = _resolve(prompts)
    run = _start(
        chain,
        requests,
        errors,
        strict=strict,
        concurrency=concurrency,
        refresh=refresh,
        dry_run=dry_run,
        progress=progress,
        clock=clock,
        max_wait=max_wait,
    )
    pause = sleep or chain.sleep
    in_flight: dict[concurrent.futures.Future[_Result], _Item] = {}
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix="fallbackchain-warm"
    )
    try:
        while (step := run.next_step(len(in_flight))) is not None:
            match step:
                case _LookUp(item):
                    run.looked_up(item, chain.cache.get(item.key or ""))
                case _Send(item):
                    in_flight[pool.submit(_ask_sync, chain, item)] = item
                case Sleep(seconds):
                    pause(seconds)
                case _Collect(timeout):
                    done, _ = concurrent.futures.wait(
                        in_flight, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    run.collect(in_flight, done)
    finally:
        for future in in_flight:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return run.report()


async def awarm(
    chain: AsyncFallbackChain,
    prompts: PromptSource,
    *,
    concurrency: int = 4,
    refresh: bool = False,
    strict: bool = False,
    dry_run: bool = False,
    progress: Callable[[WarmProgress], None] | None = None,
    max_wait: float | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> WarmReport:
    """The asyncio form of :func:`warm` for an :class:`AsyncFallbackChain`.

    Requests run as tasks on the running loop; file and cache reads run in worker threads.
    Cancelling the task cancels the requests in flight (neutral for the breakers); answers
    already written stay in the cache.
    """
    requests, errors = await asyncio.to_thread(_resolve, prompts)
    run = _start(
        chain,
        requests,
        errors,
        strict=strict,
        concurrency=concurrency,
        refresh=refresh,
        dry_run=dry_run,
        progress=progress,
        clock=clock,
        max_wait=max_wait,
    )
    pause = sleep or chain.sleep
    in_flight: dict[asyncio.Task[_Result], _Item] = {}
    try:
        while (step := run.next_step(len(in_flight))) is not None:
            match step:
                case _LookUp(item):
                    cached = await asyncio.to_thread(chain.cache.get, item.key or "")
                    run.looked_up(item, cached)
                case _Send(item):
                    in_flight[asyncio.create_task(_ask_async(chain, item))] = item
                case Sleep(seconds):
                    await pause(seconds)
                case _Collect(timeout):
                    done, _ = await asyncio.wait(
                        in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    run.collect(in_flight, done)
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*in_flight, return_exceptions=True)
    return run.report()


def _reset_timeouts(chain: FallbackChain | AsyncFallbackChain) -> dict[str, float]:
    """Each live tier's breaker ``reset_timeout``, by tier name."""
    return {name: route.reset_timeout for route in chain.config.routes() for name, _ in route.tiers}


def _max_wait(chain: FallbackChain | AsyncFallbackChain, max_wait: float | None) -> float:
    if max_wait is None:
        return 10 * max(_reset_timeouts(chain).values())
    if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or max_wait < 0:
        raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
    return float(max_wait)
