"""The shipped examples run as documented and tell the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a subprocess
def test_quickstart_tells_the_whole_story():
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    sources = [line.split("source=")[1].split()[0] for line in out.splitlines() if "source=" in line]
    assert sources == ["stream", "stream", "stream", "cache", "cache", "cache"]
    assert "stream:connection error" in out  # the drop was recovered on the stream tier
    assert "stream:HTTP 429" in out
    assert "upstream requests during this answer: 0" in out
    assert "{'stream': 'open', 'completion': 'closed'}" in out
    assert "{'stream': 'open', 'completion': 'open'}" in out
