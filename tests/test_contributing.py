"""CONTRIBUTING.md's module map names every module of the package (it must stay true)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_map_lists_every_module() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`((?:[a-z]+/)?[_a-z]+\.py)`", text))
    package = ROOT / "fallbackchain"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    assert modules - listed == set(), "add these to CONTRIBUTING.md's module map"
