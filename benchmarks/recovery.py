"""Recovery: time from the API coming back to the first live answer.

Worst case for a breaker: the API comes back the moment both breakers have opened, so the
chain must wait the whole ``reset_timeout`` before its half-open probe. Requests keep arriving
at 20/s (answered from the cache meanwhile); the first answer with a live source ends the
measurement. Target: ≤ reset_timeout + one request (a live request's duration, measured on
the same server just before).

The outage scenario reports the other end: the API coming back after a 30-s outage, with the
breakers already waiting for a while.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from _common import (
    API_KEY,
    Row,
    Section,
    Settings,
    fmt_time,
    percentile,
    production_config,
    user,
    wait_until,
)

from fallbackchain import AllTiersFailedError, FallbackChain
from fallbackchain.testing import Fault, FaultServer

RATE = 20.0
PROMPTS = [f"recovery prompt {i}" for i in range(20)]


def run(settings: Settings) -> Section:
    reset_timeout = 3.0 if settings.quick else 30.0
    section = Section("recovery")
    cache_dir = settings.scratch / "recovery-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    with FaultServer(words=60) as server:
        config = production_config(
            server.base_url, cache_dir, breaker__reset_timeout=reset_timeout
        )
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY)
        chain = FallbackChain(config, client=client)
        try:
            for prompt in PROMPTS:
                chain.complete(user(prompt))
            one_request = []
            for prompt in PROMPTS:
                start = time.perf_counter()
                chain.complete(user(prompt + " (live)"))
                one_request.append(time.perf_counter() - start)
            request_time = percentile(one_request, 50)

            # the outage, until both breakers are open
            server.default = Fault.status(503)
            with ThreadPoolExecutor(max_workers=8) as pool:
                futures = []
                while set(chain.breaker_states().values()) != {"open"}:
                    futures.append(pool.submit(chain.complete, user(PROMPTS[0])))
                    time.sleep(1 / RATE)
                for future in futures:
                    with contextlib.suppress(AllTiersFailedError):
                        future.result()
            # the API comes back the moment the breakers are open: the worst case
            server.default = Fault.ok()
            back = time.perf_counter()
            first_live: list[float] = []
            sources: dict[str, int] = {}
            lock = threading.Lock()

            def one(prompt: str) -> None:
                response = chain.complete(user(prompt))
                with lock:
                    sources[response.source] = sources.get(response.source, 0) + 1
                    if response.source != "cache":
                        first_live.append(time.perf_counter())

            with ThreadPoolExecutor(max_workers=64) as pool:
                index = 0
                limit = back + reset_timeout + 10.0
                while not first_live and time.perf_counter() < limit:
                    due = back + index / RATE
                    now = time.perf_counter()
                    if due > now:
                        time.sleep(due - now)
                    pool.submit(one, PROMPTS[index % len(PROMPTS)])
                    index += 1
            wait_until(lambda: bool(first_live), 5.0)
            recovery = (min(first_live) - back) if first_live else float("nan")
            states = chain.breaker_states()
        finally:
            chain.close()
            client.close()
        server.wait_idle(5.0)
    target = reset_timeout + request_time
    section.rows.append(
        Row(
            "recovery",
            "API back right after both breakers opened: time to the first live answer",
            fmt_time(recovery),
            "",
            f"{recovery / reset_timeout:.3f} of reset_timeout",
            f"≤ reset_timeout + one request = {fmt_time(target)}",
            recovery <= target,
            f"reset_timeout {reset_timeout:g} s; one live request p50 {fmt_time(request_time)}; "
            f"meanwhile {sources.get('cache', 0)} requests answered from the cache; "
            f"breakers after: {states}",
        )
    )
    section.chart = {"recovery": recovery, "reset_timeout": reset_timeout, "target": target}
    return section


def outage_row(chart: dict[str, Any]) -> Row | None:
    """The recovery seen at the end of the outage scenario, as a table row."""
    recovery = chart.get("recovery_end_of_outage")
    reset_timeout = chart.get("reset_timeout")
    if reset_timeout is None:
        return None
    if recovery is None:
        return Row(
            "recovery",
            "API back after the outage: time to the first live answer",
            "none",
            target="≤ reset_timeout + one request",
            met=False,
        )
    opened = chart.get("opened_at") or 0.0
    return Row(
        "recovery",
        "API back at the end of the outage: time to the first live answer",
        fmt_time(recovery),
        "",
        "",
        f"≤ reset_timeout + one request ({reset_timeout:g} s + one request)",
        recovery <= reset_timeout + 1.0,
        f"breakers had opened {fmt_time(opened)} into the outage",
    )


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp)))
    for row in result.rows:
        print(row)
