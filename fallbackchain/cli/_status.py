"""``fallbackchain status``: breaker states, the cache's size and age range, the config in effect.

What a caller can rely on: the exit status is 1 when state the config uses cannot be read (a
Redis server holding shared breakers or the cache, or a cache directory that cannot be opened);
breakers kept in memory are per process, so they are named but not shown. What is shown
applies to both provider APIs: chat-completions and Responses requests go through the same
routes and the same breakers, and the cache holds the answers of both (each under its own keys,
so one is never served for the other).
"""

from __future__ import annotations

import argparse
import time

from .._backends import gate_store
from .._config import ChainConfig
from .._config_file import load_config
from .._redact import mask_url
from ._cache_commands import missing_directory, open_cache
from ._config_commands import print_config
from ._output import PROG, ExitCode, duration, err, out, showing_warnings

__all__ = ["cmd_status"]


def _breaker_lines(config: ChainConfig) -> tuple[list[str], bool]:
    """One line per tier's breaker, and whether the shared store (Redis) could be read."""
    tiers = [name for route in config.routes() for name, _ in route.tiers]
    if config.breaker.storage == "memory":
        return [
            f'  {tier}: kept in each process (storage = "memory"); not visible from here'
            for tier in tiers
        ], True
    lines = []
    reachable = True
    for tier in tiers:
        store = gate_store(config, tier)
        state, failures = store.current_state(), store.failures()
        # A Redis store that could not read Redis answers from local state: not the fleet's.
        if getattr(store, "using_redis", True):
            lines.append(f"  {tier}: {state} (failures {failures})")
        else:
            reachable = False
            url = mask_url(config.breaker.redis_url)
            lines.append(f"  {tier}: unknown (Redis at {url} is unreachable)")
    return lines, reachable


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    out(f"# status of {config.source}")
    out("breakers (per tier; chat and Responses requests share them):")
    with showing_warnings():
        lines, reachable = _breaker_lines(config)
    for line in lines:
        out(line)
    out("cache (chat completions and Responses answers, under distinct keys):")
    if config.cache.enabled and (directory := missing_directory(config)) is not None:
        out(f"  {directory}: no cache yet (nothing stored there)")
    elif config.cache.enabled:
        with showing_warnings(), open_cache(config) as cache:
            stats = cache.stats(scan=True) if cache.disk_available else None
        if stats is None:
            reachable = False
            out(f"  {cache.directory}: cannot be opened (see the warning above)")
        else:
            now = time.time()
            ages = [
                "-" if value is None else f"{duration(now - value)} ago"
                for value in (stats.oldest, stats.newest)
            ]
            out(f"  {stats.directory}: {stats.entries} entries, {stats.bytes} bytes")
            out(f"  oldest {ages[0]}, newest {ages[1]}, {stats.expired} expired")
    else:
        out("  disabled (cache.enabled = false)")
    out("config in effect (no secrets):")
    print_config(config)
    if not reachable:
        err(f"{PROG}: error: state this config uses cannot be read (see above)")
        return ExitCode.FAILED
    return ExitCode.OK
