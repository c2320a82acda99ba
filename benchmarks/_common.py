"""Shared pieces of the benchmarks: the fault server in its own process, configs, statistics.

Everything here talks to loopback only (the project's FaultServer); nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

import fallbackchain
from fallbackchain import ChainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-not-a-real-key"


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    metric: str
    chain: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    """What one scenario module returns: table rows, data for the chart, free-text notes."""

    name: str
    rows: list[Row] = field(default_factory=list)
    chart: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    quick: bool
    scratch: Path


# --------------------------------------------------------------------------------------------
# statistics and formatting
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant figures readable."""
    if seconds != seconds:  # NaN
        return "n/a"
    magnitude = abs(seconds)
    if magnitude < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if magnitude < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = f"{mem / (1 << 30):.0f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "openai": openai.__version__,
        "fallbackchain": getattr(fallbackchain, "__version__", "?"),
        "commit": commit or "?",
    }


# --------------------------------------------------------------------------------------------
# the fault server in a separate process (so its CPU time is not ours)
# --------------------------------------------------------------------------------------------


@contextmanager
def server_process(words: int = 60) -> Iterator[str]:
    """Run ``python -m fallbackchain.testing`` on a free loopback port; yield its base_url."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fallbackchain.testing", "--port", "0", "--words", str(words)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        line = proc.stdout.readline() if ready else ""
        if "base_url=" not in line:
            raise RuntimeError(f"fault server did not start: {line!r}")
        base_url = line.split("base_url=", 1)[1].strip()
        yield base_url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


def production_config(base_url: str, cache_dir: Path, **overrides: Any) -> ChainConfig:
    """``config/fallbackchain.toml`` (the production defaults), pointed at ``base_url``.

    ``overrides`` are ``section__key=value`` pairs, e.g. ``breaker__reset_timeout=2.0``.
    """
    base = load_config(ROOT / "config" / "fallbackchain.toml")
    sections: dict[str, dict[str, Any]] = {
        "openai": {"base_url": base_url, "model": MODEL},
        "cache": {"directory": str(cache_dir)},
    }
    for name, value in overrides.items():
        section, key = name.split("__", 1)
        sections.setdefault(section, {})[key] = value
    changes = {
        name: dataclasses.replace(getattr(base, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(base, **changes, source=None)


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]
