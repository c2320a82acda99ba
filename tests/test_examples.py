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


@pytest.mark.slow  # a subprocess
def test_the_agent_loop_survives_drops_mid_tool_call_and_mid_answer():
    result = subprocess.run(
        [sys.executable, "examples/agent_tools.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    events, sdk = result.stdout.split("### as plain openai-SDK code")
    turn1, turn2 = events.split("== turn 2")
    # turn 1: the dropped call's start is shown, then voided by one reset, then the whole call
    assert turn1.count("tool call get_weather") == 2 and turn1.count("[reset") == 1
    assert turn1.split("[reset")[1].count('{"city": "Oslo", "unit": "celsius"}') == 1
    assert "ran get_weather -> {'city': 'Oslo'" in turn1
    # turn 2: the text dropped mid-way is continued, nothing shown twice
    assert "[reset" not in turn2 and "tool call" not in turn2
    assert turn2.count("a good day for a coat") == 2  # streamed once, then the final line
    assert events.count("stream:connection error") == 2
    assert events.count("events rebuild the final message: True") == 2
    # the same drops under unchanged SDK code, default options: one whole call, then the answer
    turn1, turn2 = sdk.split("== turn 2")
    assert turn1.count("tool call get_weather") == 1
    assert turn1.count('{"city": "Oslo", "unit": "celsius"}') == 1
    assert "ran get_weather -> {'city': 'Oslo'" in turn1
    assert turn2.count("a good day for a coat") == 2
    for part in (events, sdk):
        assert "final answer: Right now in Oslo it is 7 degrees celsius and cloudy" in part
        assert "upstream requests: 4" in part
