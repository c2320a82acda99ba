"""``benchmarks/peers.py``: skips cleanly without the extra; with it, the mid-stream scenario runs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import their siblings
    return importlib.import_module("peers")


def test_without_the_extra_it_says_what_is_missing_and_exits_0(
    peers: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if not installed: imports fail
    written = peers.OUT.read_text(encoding="utf-8") if peers.OUT.exists() else None

    assert peers.main([]) == 0

    out = capsys.readouterr().out
    assert "skipped, not installed: litellm" in out
    assert "'.[peers]'" in out
    assert (peers.OUT.read_text(encoding="utf-8") if peers.OUT.exists() else None) == written


@pytest.mark.slow  # imports litellm (~3 s) and streams 16 answers of 300 words
def test_mid_stream_faults_are_measured_for_every_contender(
    peers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tenacity")
    pytest.importorskip("litellm")
    monkeypatch.setenv(peers.KEY_ENV, "sk-test-not-a-real-key")
    results = peers.Results(quick=True)

    peers.mid_stream(results, tmp_path)

    for label in ("drop", "early end"):
        ok = results.expected_ok[label]
        assert set(ok) == set(peers.CONTENDERS)
        assert all(ok["fallbackchain"])  # complete every time
        assert set(results.duplicated[label]["fallbackchain"]) == {0}  # nothing shown twice
    assert not any(results.expected_ok["drop"]["raw SDK"])  # the SDK alone raises
    assert any(results.duplicated["drop"]["tenacity"])  # a whole-call retry replays the text
    lines = peers.table(results)
    assert len(lines) > 2
    assert all(line.count("|") == len(peers.CONTENDERS) + 2 for line in lines)
