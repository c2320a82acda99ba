"""The plan of routes a chain tries (temporary: replaced by ``ChainConfig.routes()``)."""

from __future__ import annotations

from dataclasses import dataclass

from ._config import ChainConfig

__all__ = ["RouteConfig", "route_plan"]


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    model: str
    streaming: bool
    tiers: tuple[str, ...]
    timeout: float
    first_token_timeout: float
    idle_timeout: float
    max_attempts: int
    stream_usage: bool
    context_window: int
    fail_max: int
    reset_timeout: float


def route_plan(config: ChainConfig) -> tuple[RouteConfig, ...]:
    cfg, retry, breaker = config.openai, config.retry, config.breaker
    routes = [
        RouteConfig(
            "primary",
            cfg.model,
            True,
            ("stream", "completion"),
            cfg.timeout,
            cfg.first_token_timeout,
            cfg.idle_timeout,
            retry.max_attempts,
            True,
            cfg.context_window,
            breaker.fail_max,
            breaker.reset_timeout,
        )
    ]
    for fb in config.fallbacks:
        routes.append(
            RouteConfig(
                fb.name,
                fb.model,
                fb.stream,
                (fb.name,),
                cfg.timeout,
                cfg.first_token_timeout,
                cfg.idle_timeout,
                retry.max_attempts,
                True,
                fb.context_window,
                fb.fail_max or breaker.fail_max,
                fb.reset_timeout or breaker.reset_timeout,
            )
        )
    return tuple(routes)
