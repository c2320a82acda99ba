"""The order in which one request tries its tiers, and where it stands in it.

Pure bookkeeping over the chain's tiers (see :class:`~fallbackchain.chain._steps.Tier`): which
tier is current, which come after it, and the ways a request moves on (the next tier, past a
route, a route deferred behind the others, straight to the cache), plus the searches the
core's decisions need (a tier on a larger model, the next route to hedge with).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Literal

from ._steps import Tier

__all__ = ["Move", "TierPlan"]

Move = Literal["tier", "route", "defer", "live"]
"""How a request leaves its current tier: ``"tier"``: the next tier in the plan;
``"route"``: past this route's remaining tiers; ``"defer"``: this route's remaining tiers move
behind every other route's; ``"live"``: straight to the cache."""


class TierPlan:
    """One request's tiers in the order it will try them. Not thread-safe (one request)."""

    __slots__ = ("_at", "_deferred", "_order", "_tiers")

    def __init__(
        self, tiers: Sequence[Tier], *, whole_first: bool, routes: Collection[str] | None
    ) -> None:
        """Plan a request over ``tiers`` (every live tier of the chain, primary first).

        ``whole_first``: within each route, its non-streaming tier before its streaming one;
        ``routes``: the routes this request may use (``None``: all).
        """
        self._tiers = tiers
        self._order = [i for i, t in enumerate(tiers) if routes is None or t.provider in routes]
        if whole_first:  # routes keep their order; within one, non-streaming tiers first
            first: dict[str, int] = {}
            for index, tier in enumerate(tiers):
                first.setdefault(tier.provider, index)
            self._order.sort(key=lambda i: (first[tiers[i].provider], tiers[i].streaming))
        self._at = 0  # position in _order of the current tier
        self._deferred: set[str] = set()  # routes left for silence in this request

    @property
    def current(self) -> Tier | None:
        """The tier the request is at; ``None`` once no live tier is left."""
        return self._tiers[self._order[self._at]] if self._at < len(self._order) else None

    @property
    def primary(self) -> str:
        """The primary route's name (the first configured route)."""
        return self._tiers[0].provider

    def ahead(self) -> list[Tier]:
        """The tiers after the current one, in order."""
        return [self._tiers[i] for i in self._order[self._at + 1 :]]

    def move_on(self, how: Move, *, to: Tier | None = None) -> None:
        """Leave the current tier (see :data:`Move`; ``to``: a tier ahead to jump to)."""
        here = self._tiers[self._order[self._at]].provider
        rest = self._order[self._at + 1 :]
        if how == "live":
            rest = []
        elif how in ("route", "defer"):
            others = [i for i in rest if self._tiers[i].provider != here]
            if how == "defer":
                self._deferred.add(here)
                others += [i for i in rest if self._tiers[i].provider == here]
            rest = others
        elif to is not None:
            rest = rest[rest.index(self._tiers.index(to)) :]
        self._order[self._at + 1 :] = rest
        self._at += 1

    def end(self) -> None:
        """No live tier is left for this request (its deadline passed)."""
        self._at = len(self._order)

    def drop_ahead(self, drop: Callable[[Tier], bool]) -> None:
        """Take the tiers after the current one for which ``drop`` is true out of the plan."""
        ahead = self._order[self._at + 1 :]
        self._order[self._at + 1 :] = [i for i in ahead if not drop(self._tiers[i])]

    def larger_model(self, here: Tier) -> Tier | None:
        """The next tier on another model whose known context window is larger than ``here``'s."""
        for tier in self.ahead():
            same_model = (tier.provider, tier.model) == (here.provider, here.model)
            if not same_model and tier.route.context_window > here.route.context_window:
                return tier
        return None

    def hedge_target(self, here: Tier) -> Tier | None:
        """The next streaming tier of another route not left for silence in this request."""
        for tier in self.ahead():
            if (
                tier.provider != here.provider
                and tier.streaming
                and tier.provider not in self._deferred
            ):
                return tier
        return None
