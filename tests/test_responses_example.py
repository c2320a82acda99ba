"""The Responses example runs as documented, and the overloads type-check as a user meets them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a subprocess
def test_the_responses_example_tells_the_story() -> None:
    result = subprocess.run(
        [sys.executable, "examples/responses.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    blocks = out.split("\n== ")[1:]
    assert len(blocks) == 4
    healthy, resumed, retried, outage = blocks
    assert "source=stream" in healthy
    assert "requests: {'responses.create': 1}" in healthy
    # the resumed background stream: one generation, one GET, each word once
    assert "resumed after event" in resumed
    assert "requests: {'responses.create': 1, 'responses.retrieve': 1}" in resumed
    answer = healthy.splitlines()[1]
    assert resumed.splitlines()[1] == answer
    assert retried.splitlines()[1] == answer
    assert "requests: {'responses.create': 2}" in retried
    assert "source=cache" in outage
    assert outage.splitlines()[1] == answer


@pytest.mark.slow  # a mypy subprocess
def test_the_responses_overloads_type_check_under_strict_mypy() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "tests/typing/responses.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
