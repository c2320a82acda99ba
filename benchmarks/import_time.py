"""Import cost: ``import fallbackchain`` next to ``import openai``, each in a fresh interpreter.

Each sample is one new ``python -c`` process that reads the clock, runs the import, and
prints the elapsed time measured inside the process (``time.perf_counter``), so interpreter
start-up is left out of both sides. Rounds alternate (openai, fallbackchain, the two-name
``from fallbackchain import FallbackChain``) so load on the machine hits all alike; the
ratio is of the medians. A second pass runs ``python -X importtime`` once per statement
and reports the largest top-level packages, to show where the time goes.

    .venv/bin/python benchmarks/import_time.py [--quick] [--rounds N]

Target (issue #14): ``import fallbackchain`` <= 1.1x ``import openai``; the redis client and
OpenTelemetry are not imported unless a config asks for them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from _common import Row, Section, Settings, fmt_time, median, percentile

TARGET = 1.1

STATEMENTS: dict[str, str] = {
    "openai": "import openai",
    "fallbackchain": "import fallbackchain",
    "FallbackChain": "from fallbackchain import FallbackChain",
}

_TIMED = (
    "import time; t = time.perf_counter()\n"
    "{statement}\n"
    "t = time.perf_counter() - t\n"
    "import sys\n"
    "print(t, ','.join(sorted(m for m in ('redis', 'opentelemetry') if m in sys.modules)))\n"
)


def _sample(statement: str) -> tuple[float, str]:
    result = subprocess.run(
        [sys.executable, "-c", _TIMED.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seconds, _, loaded = result.stdout.strip().partition(" ")
    return float(seconds), loaded


def measure(rounds: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per statement: ``rounds`` import times in fresh interpreters, and the optional packages
    it left in ``sys.modules`` (``"redis,opentelemetry"``, or ``""``)."""
    for statement in STATEMENTS.values():
        _sample(statement)  # warm the file system cache and the .pyc files once
    samples: dict[str, list[float]] = defaultdict(list)
    loaded: dict[str, str] = {}
    for _ in range(rounds):
        for label, statement in STATEMENTS.items():
            seconds, modules = _sample(statement)
            samples[label].append(seconds)
            loaded[label] = modules
    return samples, loaded


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def top_packages(statement: str, count: int = 8) -> list[tuple[str, float]]:
    """The modules imported directly by the statement's package that took longest (nested
    imports included), from ``-X importtime``; a module shared with openai is counted under the
    first importer only."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    totals: dict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        cumulative, indent, name = int(match.group(2)), len(match.group(3)), match.group(4)
        if indent == 3:  # imported directly by the package the statement names
            totals[name] += cumulative / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:count]


def run(settings: Settings, rounds: int | None = None) -> Section:
    rounds = rounds or (7 if settings.quick else 21)
    samples, loaded = measure(rounds)
    section = Section("import_time")
    base = median(samples["openai"])
    for label in ("fallbackchain", "FallbackChain"):
        value = median(samples[label])
        ratio = value / base
        section.rows.append(
            Row(
                "import",
                f"`{STATEMENTS[label]}` (median of {rounds} fresh interpreters)",
                fmt_time(value),
                f"{fmt_time(base)} (`import openai`)",
                f"{ratio:.2f}x",
                f"<= {TARGET}x",
                ratio <= TARGET,
                f"p90 {fmt_time(percentile(samples[label], 90))} vs "
                f"{fmt_time(percentile(samples['openai'], 90))}; optional packages loaded: "
                f"{loaded[label] or 'none'}",
            )
        )
        section.chart[label] = {"median": value, "openai": base, "ratio": ratio}
    section.notes.append(
        "slowest imports under `from fallbackchain import FallbackChain`: "
        + ", ".join(
            f"{name} {fmt_time(seconds)}"
            for name, seconds in top_packages(STATEMENTS["FallbackChain"])
        )
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 rounds instead of 21")
    parser.add_argument("--rounds", type=int, default=None, help="fresh interpreters per import")
    args = parser.parse_args()
    section = run(Settings(quick=args.quick, scratch=Path(".")), rounds=args.rounds)
    for row in section.rows:
        print(f"{row.metric}: {row.chain} vs {row.baseline} -> {row.ratio} "
              f"(target {row.target}: {'met' if row.met else 'missed'}); {row.note}")
    for note in section.notes:
        print(note)


if __name__ == "__main__":
    main()
