"""Which fault a request gets, and what the server saw: rules, counters, the request log.

:class:`Rulebook` is the thread-safe state behind
:class:`~fallbackchain.testing.FaultServer`'s scripting and observation: test
threads push rules and read counters while the server's event loop admits
requests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._faults import Fault, FaultKind

__all__ = ["DEFAULT_MAX_RECORDED", "Api", "RecordedRequest", "Route", "Rulebook"]

DEFAULT_MAX_RECORDED: Final = 1000
"""How many requests a :class:`FaultServer` keeps in :attr:`~FaultServer.requests` by default."""

Api = Literal["chat", "responses"]
"""The APIs a rule can be limited to."""

Route = Literal["chat.completions", "responses.create", "responses.retrieve", "responses.cancel"]
"""The routes that take a rule; the part before the dot is the :data:`Api`."""

_APIS: Final = (None, "chat", "responses")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received and applied a fault rule to.

    Chat completions and Responses requests are recorded once their body
    parsed as a JSON object (and so had a fault rule applied); retrievals once
    the response they ask for was found.
    """

    method: str
    path: str
    headers: dict[str, str]
    """Request headers with lower-case names; repeated headers joined by ``", "``."""
    body: dict[str, Any]
    """The parsed JSON body; for a retrieval ``{"response_id", "stream", "starting_after"}``."""
    stream: bool
    """``True`` when the body had ``"stream": true`` (a retrieval: ``?stream=true``)."""
    fault: Fault
    """The fault that was applied to this request (``Fault.ok()`` when none)."""
    request_id: str
    """The ``x-request-id`` the response carried."""
    received_at: float = field(default_factory=time.time)
    """Wall-clock time (``time.time()``) the request was read."""
    route: Route = "chat.completions"
    """``"chat.completions"``, ``"responses.create"`` or ``"responses.retrieve"``."""


@dataclass(slots=True)
class _Rule:
    fault: Fault
    stream: bool | None
    remaining: int | None
    api: Api | None


class Rulebook:
    """The scripted rules, the default fault, the counters and the bounded request log."""

    def __init__(self, max_recorded: int | None) -> None:
        if max_recorded is not None and (
            isinstance(max_recorded, bool) or not isinstance(max_recorded, int) or max_recorded < 0
        ):
            raise ValueError(f"max_recorded must be an int >= 0 or None, got {max_recorded!r}")
        self._lock = threading.Condition(threading.Lock())
        self._rules: deque[_Rule] = deque()
        self._default = Fault.ok()
        self.max_recorded = max_recorded
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._fault_counts: Counter[FaultKind] = Counter()
        self._route_counts: Counter[str] = Counter()
        self._total = 0
        self._stream = 0
        self._completion = 0
        self._active = 0
        self._max_active = 0

    # -- scripting ----------------------------------------------------------------

    def push(self, fault: Fault, stream: bool | None, times: int | None, api: Api | None) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {fault!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times!r}")
        if api not in _APIS:
            raise ValueError(f"api must be 'chat', 'responses' or None, got {api!r}")
        with self._lock:
            self._rules.append(_Rule(fault, stream, times, api))

    @property
    def default(self) -> Fault:
        with self._lock:
            return self._default

    @default.setter
    def default(self, fault: Fault) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {fault!r}")
        with self._lock:
            self._default = fault

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._default = Fault.ok()

    def pending(self) -> list[tuple[Fault, bool | None, int | None]]:
        with self._lock:
            return [(r.fault, r.stream, r.remaining) for r in self._rules]

    # -- serving --------------------------------------------------------------------

    def admit(self, record: RecordedRequest) -> Fault:
        """Pick the fault for a request, count and log it; it is active until :meth:`done`.

        ``record.fault`` is ignored: the logged copy carries the fault picked.
        """
        api = record.route.split(".", 1)[0]
        with self._lock:
            fault = self._default
            for rule in self._rules:
                if rule.stream is not None and rule.stream != record.stream:
                    continue
                if rule.api is not None and rule.api != api:
                    continue
                fault = rule.fault
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                break
            if self.max_recorded != 0:  # the deque drops the oldest past max_recorded
                self._requests.append(dataclasses.replace(record, fault=fault))
            self._fault_counts[fault.kind] += 1
            self._route_counts[record.route] += 1
            self._total += 1
            if record.stream:
                self._stream += 1
            else:
                self._completion += 1
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            return fault

    def done(self) -> None:
        """One admitted request is no longer being served."""
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._lock.notify_all()

    # -- observation ----------------------------------------------------------------

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def fault_counts(self) -> Counter[FaultKind]:
        with self._lock:
            return Counter(self._fault_counts)

    def route_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._route_counts)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "total": self._total,
                "stream": self._stream,
                "completion": self._completion,
                "active": self._active,
                "max_active": self._max_active,
            }

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()
            self._fault_counts.clear()
            self._route_counts.clear()
            self._total = self._stream = self._completion = 0
            self._max_active = self._active

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._active == 0, timeout)
