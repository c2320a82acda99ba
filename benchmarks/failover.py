"""Failover time per fault kind: library defaults and one fallback, against a misbehaving primary.

For each fault kind, the primary (a FaultServer) misbehaves on every request while a second
FaultServer, the one ``[[fallbacks]]`` entry, answers normally. Three contenders, each asking
one streamed question:

* fallbackchain with ``ChainConfig()`` defaults (first_token_timeout 10 s, idle_timeout 10 s,
  timeout 30 s, max_attempts 3, base_delay 0.5 s, max_retry_after 30 s) and the fallback;
* the tutorial retry loop (``naive.py``: 3 tries, sleep 1 s then 2 s, SDK retries on), which
  has no fallback;
* the SDK alone (``max_retries=2``, its default), one call.

Both baselines use ``openai.OpenAI(max_retries=2, timeout=30)``. Measured: the wall time to a
complete answer (or to the error that ends the try), the requests the primary received by
then, and who answered. Every scenario has its own FaultServers and runs concurrently with the
others, so the run takes as long as its slowest scenario; one still running at the cap is
reported as "> cap" with the primary's requests so far.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import naive
import openai
from _common import (
    API_KEY,
    MODEL,
    RESULTS,
    Row,
    Section,
    Settings,
    machine_info,
    user,
)

from fallbackchain import CacheConfig, ChainConfig, FallbackChain, FallbackConfig, OpenAIConfig
from fallbackchain.testing import Fault, FaultServer

KEY_ENV = "FALLBACKCHAIN_BENCH_API_KEY"
BACKUP_MODEL = "backup-model"
WORDS = 30
SDK_TIMEOUT = 30.0
CAP_FULL = 125.0  # the SDK alone honours Retry-After: 60 twice (120 s); nothing else ends
CAP_QUICK = 35.0
REPEATS_FULL = 3
REPEATS_QUICK = 1
CONTENDERS = ("fallbackchain", "tutorial", "sdk")
# The defaults the targets below are written against (ChainConfig() defaults).
_DEFAULTS = ChainConfig()
FIRST_TOKEN = _DEFAULTS.openai.first_token_timeout
IDLE = _DEFAULTS.openai.idle_timeout
MAX_ATTEMPTS = _DEFAULTS.retry.max_attempts


@dataclass(frozen=True)
class Kind:
    """One fault kind: its label, the fault the primary applies, the chain's target."""

    label: str
    fault: Fault
    target: str
    met: Callable[[Outcome], bool]


@dataclass
class Outcome:
    """What one contender got for one fault kind in one repetition."""

    seconds: float
    primary_requests: int
    answered_by: str = ""
    error: str = ""
    capped: bool = False
    text_ok: bool = True
    trace: str = ""
    gaps: list[float] = field(default_factory=list)
    """Seconds between consecutive primary requests (received_at), in order."""


def _backup_within(limit: float, requests: int | None = None) -> Callable[[Outcome], bool]:
    def met(o: Outcome) -> bool:
        ok = o.answered_by == "fallback" and o.text_ok and o.seconds <= limit
        return ok and (requests is None or o.primary_requests == requests)

    return met


def _spaced_budget(min_gap: float) -> Callable[[Outcome], bool]:
    def met(o: Outcome) -> bool:
        return (
            o.answered_by == "fallback"
            and o.text_ok
            and o.primary_requests <= MAX_ATTEMPTS
            and all(gap >= min_gap for gap in o.gaps)
        )

    return met


KINDS: tuple[Kind, ...] = (
    Kind(
        "429, no Retry-After",
        Fault.status(429),
        f"≤ max_attempts ({MAX_ATTEMPTS}) primary requests, spaced, then the fallback",
        _spaced_budget(_DEFAULTS.retry.base_delay / 2 - 0.01),
    ),
    Kind(
        "429, Retry-After: 2",
        Fault.status(429, retry_after=2),
        f"≤ {MAX_ATTEMPTS} primary requests, ≥ 2 s apart, then the fallback",
        _spaced_budget(2.0 - 0.01),
    ),
    Kind(
        "429, Retry-After: 60",
        Fault.status(429, retry_after=60),
        "1 primary request, the fallback at once (60 s > max_retry_after)",
        _backup_within(1.0, requests=1),
    ),
    Kind(
        "503, persistent",
        Fault.status(503),
        f"≤ {MAX_ATTEMPTS} primary requests, spaced, then the fallback",
        _spaced_budget(_DEFAULTS.retry.base_delay / 2 - 0.01),
    ),
    Kind(
        "connection reset",
        Fault.reset(),
        f"≤ {MAX_ATTEMPTS} primary requests, then the fallback",
        _spaced_budget(0.0),
    ),
    Kind(
        "silent (no headers for 60 s)",
        Fault.slow_first_byte(seconds=60),
        f"fallback ≤ first_token_timeout + 1 s = {FIRST_TOKEN + 1:g} s, 1 primary request",
        _backup_within(FIRST_TOKEN + 1, requests=1),
    ),
    Kind(
        "first token after 20 s",
        Fault.stall(after_chunks=0, seconds=20),
        f"fallback ≤ first_token_timeout + 1 s = {FIRST_TOKEN + 1:g} s",
        _backup_within(FIRST_TOKEN + 1),
    ),
    Kind(
        "stall mid-answer (60 s after 3 words)",
        Fault.stall(after_chunks=3, seconds=60),
        f"fallback ≤ idle_timeout + 1 s = {IDLE + 1:g} s",
        _backup_within(IDLE + 1),
    ),
)


# --------------------------------------------------------------------------------------------
# one scenario
# --------------------------------------------------------------------------------------------


class Scenario:
    """One contender against one fault kind, with its own primary (and fallback) server."""

    def __init__(self, kind: Kind, contender: str, index: int, scratch: Path) -> None:
        self.kind = kind
        self.contender = contender
        self.prompt = f"failover prompt {index}"
        self.primary = FaultServer(words=WORDS).start()
        self.primary.default = kind.fault
        self.backup = FaultServer(words=WORDS).start() if contender == "fallbackchain" else None
        self.cache_dir = scratch / f"failover-cache-{index}"
        self.outcome: Outcome | None = None
        self.started = 0.0
        self.done = threading.Event()
        self._client: openai.OpenAI | None = None
        self._chain: FallbackChain | None = None
        self.thread = threading.Thread(target=self._run, name=f"failover-{index}", daemon=True)

    # -- setup, before the clock starts --------------------------------------------------------

    def prepare(self) -> None:
        if self.contender == "fallbackchain":
            assert self.backup is not None
            config = ChainConfig(  # the library defaults; only where to call is set
                openai=OpenAIConfig(
                    base_url=self.primary.base_url, model=MODEL, api_key_env=KEY_ENV
                ),
                cache=CacheConfig(directory=str(self.cache_dir)),
                fallbacks=(
                    FallbackConfig(
                        name="backup", model=BACKUP_MODEL, base_url=self.backup.base_url
                    ),
                ),
            )
            self._chain = FallbackChain(config)
        else:
            self._client = openai.OpenAI(
                base_url=self.primary.base_url,
                api_key=API_KEY,
                max_retries=2,
                timeout=SDK_TIMEOUT,
            )

    def start(self) -> None:
        self.started = time.perf_counter()
        self.thread.start()

    # -- the measured part ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._chain is not None:
                self._ask_chain(self._chain)
            else:
                assert self._client is not None
                answer = naive.tutorial_answer if self.contender == "tutorial" else naive.sdk_answer
                self._ask_baseline(answer, self._client)
        finally:
            self.done.set()

    def _ask_chain(self, chain: FallbackChain) -> None:
        try:
            response = chain.complete(user(self.prompt))
        except Exception as exc:  # the chain gave up: an error is a result too
            self._finish(error=type(exc).__name__)
            return
        if response.source == "backup":
            assert self.backup is not None
            expected = self.backup.answer_for(user(self.prompt), BACKUP_MODEL)
            by = "fallback"
        else:
            expected = self.primary.answer_for(user(self.prompt), MODEL)
            by = f"primary ({response.source})"
        trace = " → ".join(a.tier for a in response.attempts)
        self._finish(answered_by=by, text_ok=response.text == expected, trace=trace)

    def _ask_baseline(
        self, answer: Callable[[openai.OpenAI, str], str], client: openai.OpenAI
    ) -> None:
        try:
            text = answer(client, self.prompt)
        except Exception as exc:  # whatever ends the try is its result
            self._finish(error=type(exc).__name__)
            return
        expected = self.primary.answer_for(user(self.prompt), MODEL)
        self._finish(answered_by="primary", text_ok=text == expected)

    def _finish(self, **result: Any) -> None:
        elapsed = time.perf_counter() - self.started
        self.outcome = self._outcome(elapsed, **result)

    def _outcome(self, seconds: float, **result: Any) -> Outcome:
        received = [r.received_at for r in self.primary.requests]
        gaps = [b - a for a, b in itertools.pairwise(received)]
        return Outcome(seconds=seconds, primary_requests=len(received), gaps=gaps, **result)

    # -- after the measurement -----------------------------------------------------------------

    def settle(self, cap: float) -> Outcome:
        """The outcome, waiting until ``cap`` seconds after the start at most."""
        self.done.wait(max(0.0, self.started + cap - time.perf_counter()))
        if self.outcome is None:
            self.outcome = self._outcome(cap, capped=True)
        return self.outcome

    def stop_servers(self) -> None:
        """Stop the servers: a stalled response ends, a retry loop meets a closed port."""
        self.primary.stop()
        if self.backup is not None:
            self.backup.stop()

    def close(self, deadline: float) -> None:
        """Once the servers are stopped: let the thread end (until ``deadline``), close the
        chain or client. A thread still asleep (say in the SDK's 60-s Retry-After wait) is a
        daemon: it meets a closed client when it wakes, and never holds the process."""
        self.thread.join(max(0.0, deadline - time.perf_counter()))
        if self._chain is not None:
            self._chain.close()
        if self._client is not None:
            self._client.close()


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def measure(
    scratch: Path, *, cap: float, repeats: int, kinds: tuple[Kind, ...] = KINDS
) -> dict[str, dict[str, list[Outcome]]]:
    """Outcomes by fault kind label, then contender; ``repeats`` each, all run concurrently."""
    os.environ.setdefault(KEY_ENV, API_KEY)  # the chain reads its key from the environment
    scenarios: list[Scenario] = []
    try:
        for kind in kinds:
            for contender in CONTENDERS:
                for _ in range(repeats):
                    scenarios.append(Scenario(kind, contender, len(scenarios), scratch))
        for scenario in scenarios:
            scenario.prepare()
        for scenario in scenarios:
            scenario.start()
        results: dict[str, dict[str, list[Outcome]]] = {}
        for scenario in scenarios:
            outcome = scenario.settle(cap)
            by_kind = results.setdefault(scenario.kind.label, {})
            by_kind.setdefault(scenario.contender, []).append(outcome)
    finally:
        for scenario in scenarios:
            scenario.stop_servers()
        deadline = time.perf_counter() + 3.0
        for scenario in scenarios:
            scenario.close(deadline)
    return results


def _median_outcome(outcomes: list[Outcome]) -> Outcome:
    """The repetition with the median time (the slower middle one for an even count)."""
    ordered = sorted(outcomes, key=lambda o: o.seconds)
    return ordered[len(ordered) // 2]


def cell(outcomes: list[Outcome], cap: float) -> str:
    """``"10.02 s (fallback) / 1 req"``: the median repetition; ``> cap`` when still running."""
    o = _median_outcome(outcomes)
    time_text = f"> {cap:.0f} s" if o.capped else f"{o.seconds:.2f} s"
    if o.capped:
        who = "no answer yet"
    elif o.answered_by:
        who = o.answered_by if o.text_ok else f"{o.answered_by}, WRONG TEXT"
    else:
        who = o.error
    reqs = f"{o.primary_requests} req" + ("" if o.primary_requests == 1 else "s")
    return f"{time_text} ({who}) / {reqs}"


def _spread(outcomes: list[Outcome]) -> str:
    if len(outcomes) < 2:
        return ""
    times = sorted(o.seconds for o in outcomes)
    return f"{times[0]:.2f} to {times[-1]:.2f} s"


def _note(by: dict[str, list[Outcome]]) -> str:
    chain = by["fallbackchain"]
    parts = [f"chain tiers tried: {_median_outcome(chain).trace or '-'}"]
    gaps = _median_outcome(chain).gaps
    if gaps:
        parts.append("gaps between primary requests " + ", ".join(f"{g:.2f} s" for g in gaps))
    for name in CONTENDERS:
        spread = _spread(by[name])
        if spread:
            parts.append(f"{name} range over {len(by[name])} runs {spread}")
    return "; ".join(parts)


def _measured(results: dict[str, dict[str, list[Outcome]]]) -> list[Kind]:
    return [kind for kind in KINDS if kind.label in results]


def rows(results: dict[str, dict[str, list[Outcome]]], cap: float) -> list[Row]:
    """One results-table row per measured fault kind, in ``KINDS`` order."""
    out: list[Row] = []
    for kind in _measured(results):
        by = results[kind.label]
        chain = _median_outcome(by["fallbackchain"])
        tutorial = _median_outcome(by["tutorial"])
        sdk = _median_outcome(by["sdk"])
        ratios = []
        for other in (tutorial, sdk):
            bound = "≤ " if other.capped else ""
            ratios.append(f"{bound}{chain.seconds / other.seconds:.2g}")
        out.append(
            Row(
                "failover",
                f"{kind.label} — time to a complete answer (answered by) / primary requests",
                cell(by["fallbackchain"], cap),
                f"tutorial {cell(by['tutorial'], cap)}; SDK {cell(by['sdk'], cap)}",
                " / ".join(ratios),
                kind.target,
                all(kind.met(o) for o in by["fallbackchain"]),
                _note(by),
            )
        )
    return out


def chart_data(results: dict[str, dict[str, list[Outcome]]], cap: float) -> dict[str, Any]:
    """Labels, median times per contender, and the README-shaped table, per measured kind."""
    kinds = _measured(results)
    return {
        "cap": cap,
        "kinds": [kind.label for kind in kinds],
        "times": {
            name: [statistics.median(o.seconds for o in results[k.label][name]) for k in kinds]
            for name in CONTENDERS
        },
        "table": [
            [kind.label, *(cell(results[kind.label][name], cap) for name in CONTENDERS)]
            for kind in kinds
        ],
    }


def run(settings: Settings) -> Section:
    cap = CAP_QUICK if settings.quick else CAP_FULL
    repeats = REPEATS_QUICK if settings.quick else REPEATS_FULL
    results = measure(settings.scratch, cap=cap, repeats=repeats)
    section = Section("failover", rows=rows(results, cap), chart=chart_data(results, cap))
    section.notes.append(
        f"Failover: each of {len(KINDS)} fault kinds on a primary FaultServer (every request), "
        f"one [[fallbacks]] entry on a second FaultServer; fallbackchain with ChainConfig() "
        f"defaults, sync chain.complete (streams first); the baselines with "
        f"openai.OpenAI(max_retries=2, timeout={SDK_TIMEOUT:g}); {WORDS}-word answers; "
        f"{repeats} run(s) per cell, all concurrent, each with its own servers; median shown; "
        f"a run still going after {cap:g} s is reported as > {cap:g} s."
    )
    return section


# --------------------------------------------------------------------------------------------
# failover.md
# --------------------------------------------------------------------------------------------


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} / {five:.2f}"


def write_markdown(
    path: Path,
    section: Section,
    machine: dict[str, str],
    *,
    command: str,
    started: str,
    elapsed: float,
    load: tuple[str, str],
) -> None:
    """``failover.md``: the per-kind table in the README's shape, the machine, the notes.

    ``command`` is what produced it (say ``benchmarks/failover.py --quick``); ``elapsed`` is
    that command's run time.
    """
    data = section.chart
    lines = [
        "# Failover time per fault kind",
        "",
        f"Run {started} ({elapsed:.0f} s) with `.venv/bin/python {command}`.",
        "",
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, "
        f"{machine['os']}; Python {machine['python']}; openai {machine['openai']}; "
        f"fallbackchain {machine['fallbackchain']} (commit {machine['commit']}, plus any "
        f"uncommitted changes). Load average (1 / 5 min) at start {load[0]}, at end {load[1]}.",
        "",
        "Time to a complete answer (who answered) / requests the primary received by then.",
        "",
        "| fault kind on the primary | fallbackchain | tutorial loop | raw SDK |",
        "|---|---|---|---|",
    ]
    for label, *cells in data["table"]:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| fault kind | fallbackchain target | met |", "|---|---|---|"]
    for label, row in zip(data["kinds"], section.rows, strict=True):
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        lines.append(f"| {label} | {row.target} | {met} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in section.notes]
    lines += [f"- *{k}*: {row.note}" for k, row in zip(data["kinds"], section.rows, strict=True)]
    lines.append(f"- {' '.join((__doc__ or '').split())}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import tempfile  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"one run per cell, cap {CAP_QUICK:g} s"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fallbackchain-failover-") as tmp:
        section = run(Settings(quick=args.quick, scratch=Path(tmp)))
    elapsed = time.perf_counter() - t0
    for label, row in zip(section.chart["kinds"], section.rows, strict=True):
        flag = {True: "ok ", False: "MISS", None: "    "}[row.met]
        print(f"[{flag}] {label}: {row.chain} | {row.baseline}")
    path = args.out / "failover.md"
    write_markdown(
        path,
        section,
        machine,
        command="benchmarks/failover.py" + (" --quick" if args.quick else ""),
        started=started,
        elapsed=elapsed,
        load=(load_start, load_average()),
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
