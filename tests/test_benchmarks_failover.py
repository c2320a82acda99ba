"""Smoke test of ``benchmarks/failover.py``: two fault kinds, one run each, real fault servers."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from fallbackchain import ChainConfig

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def failover(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import their siblings
    return importlib.import_module("failover")


@pytest.mark.slow
def test_the_failover_benchmark_measures_the_chain_and_both_baselines(
    failover: ModuleType, tmp_path: Path
) -> None:
    wanted = {"429, no Retry-After", "connection reset"}
    kinds = tuple(k for k in failover.KINDS if k.label in wanted)
    results = failover.measure(tmp_path, cap=30.0, repeats=1, kinds=kinds)

    attempts = ChainConfig().retry.max_attempts
    for label in wanted:
        [chain] = results[label]["fallbackchain"]
        assert chain.answered_by == "fallback"
        assert chain.text_ok
        assert 1 <= chain.primary_requests <= attempts
        [sdk] = results[label]["sdk"]
        assert not sdk.answered_by
        assert sdk.primary_requests == 3  # max_retries=2
        [tutorial] = results[label]["tutorial"]
        assert not tutorial.capped
        assert tutorial.primary_requests == 9  # 3 tries of 3 SDK requests
        assert tutorial.seconds > chain.seconds

    rows = failover.rows(results, 30.0)
    assert [row.met for row in rows] == [True, True]
    table = failover.chart_data(results, 30.0)["table"]
    assert [line[0] for line in table] == [k.label for k in kinds]
    assert "(fallback) / " in table[0][1]
