"""``benchmarks/peers.py`` skips cleanly without its optional extra.

CI installs only ``.[dev]`` (LiteLLM alone brings half a gigabyte), so a test of the peers'
measurements would only ever skip there; the benchmark itself checks what it measures.
"""

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
