"""Run every benchmark and write ``benchmarks/results/results.md`` and ``chart.png``.

    .venv/bin/python benchmarks/run.py            # the full run (a few minutes; real 30-s outage)
    .venv/bin/python benchmarks/run.py --quick    # a short smoke run (compressed outage)
    .venv/bin/python benchmarks/run.py --only outage,cache_tier
    .venv/bin/python benchmarks/failover.py       # only failover.md (results.md untouched)

Everything runs on this machine against the project's fault server on loopback. Needs the
``bench`` extra (matplotlib, psutil).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cache_tier
import complete_path
import failover
import happy_path
import import_time
import memory
import outage
import recovery
from _common import RESULTS, Row, Section, Settings, machine_info

SCENARIOS: dict[str, Callable[[Settings], Section]] = {
    "happy_path": happy_path.run,
    "complete_path": complete_path.run,
    "outage": outage.run,
    "failover": failover.run,
    "recovery": recovery.run,
    "cache_tier": cache_tier.run,
    "memory": memory.run,
    "import_time": import_time.run,
}


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} / {five:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(
    path: Path,
    sections: list[Section],
    machine: dict[str, str],
    *,
    quick: bool,
    started: str,
    elapsed: float,
    load: tuple[str, str],
    failures: list[str],
) -> None:
    rows: list[Row] = [row for section in sections for row in section.rows]
    lines = [
        "# fallbackchain benchmarks",
        "",
        f"Run {started} ({'`--quick`: short, outage compressed' if quick else 'full run'}, "
        f"{elapsed:.0f} s) with `.venv/bin/python benchmarks/run.py"
        f"{' --quick' if quick else ''}`.",
        "",
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, "
        f"{machine['os']}; Python {machine['python']}; openai {machine['openai']}; "
        f"fallbackchain {machine['fallbackchain']} (commit {machine['commit']}, plus any "
        f"uncommitted changes). Load average (1 / 5 min) at start {load[0]}, at end {load[1]}.",
        "",
        "| scenario | metric | fallbackchain | baseline | ratio / delta | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "✅ yes", False: "❌ **no**", None: "-"}[row.met]
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    row.scenario,
                    row.metric,
                    row.chain,
                    row.baseline,
                    row.ratio,
                    row.target,
                    met,
                )
            )
            + " |"
        )
    lines += ["", "## Notes per row", ""]
    for row in rows:
        if row.note:
            lines.append(f"- *{row.scenario} — {row.metric}*: {row.note}")
    lines += ["", "## How each scenario is measured", ""]
    for section in sections:
        for note in section.notes:
            lines.append(f"- {note}")
    for name, fn in SCENARIOS.items():
        doc = (sys.modules[fn.__module__].__doc__ or "").strip().split("\n\n")[0]
        lines.append(f"- `{name}`: {' '.join(doc.split())}")
    if failures:
        lines += ["", "## Scenarios that failed to run", ""]
        lines += [f"- {failure}" for failure in failures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_chart(path: Path, sections: list[Section], machine: dict[str, str]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    charts = {section.name: section.chart for section in sections}
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    flat = list(axes.flat)
    for ax in flat:
        ax.set_visible(False)
    colors = {"raw": "#9e9e9e", "chain": "#1565c0", "chain-nocache": "#64b5f6"}

    happy = charts.get("happy path")
    if happy:
        ax = flat[0]
        ax.set_visible(True)
        groups = [g for g in ("sync", "replay", "async") if g in happy]
        names = ["raw", "chain"]
        width = 0.38
        for i, name in enumerate(names):
            values = [happy[g][name]["throughput"] for g in groups]
            ax.bar(
                [x + (i - 0.5) * width for x in range(len(groups))],
                values,
                width,
                label="raw SDK" if name == "raw" else "fallbackchain",
                color=colors[name],
            )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("content chunks / s")
        ax.set_title("Happy path: throughput")
        ax.legend()
        ax = flat[1]
        ax.set_visible(True)
        for i, name in enumerate(names):
            values = [happy[g][name]["cpu_per_chunk"] * 1e6 for g in groups]
            ax.bar(
                [x + (i - 0.5) * width for x in range(len(groups))],
                values,
                width,
                label="raw SDK" if name == "raw" else "fallbackchain",
                color=colors[name],
            )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("CPU µs per content chunk")
        ax.set_title("Happy path: CPU per chunk (client process)")
        ax.legend()

    out = charts.get("outage")
    if out:
        contenders = [c for c in ("fallbackchain", "tutorial", "sdk") if c in out]
        labels = {"fallbackchain": "fallbackchain", "tutorial": "tutorial loop", "sdk": "SDK alone"}
        palette = ["#1565c0", "#ef6c00", "#9e9e9e"]
        ax = flat[2]
        ax.set_visible(True)
        ax.bar(
            [labels[c] for c in contenders],
            [max(out[c]["upstream"], 1) for c in contenders],
            color=palette,
        )
        ax.set_yscale("log")
        ax.set_ylabel("upstream requests during the outage")
        ax.set_title("Outage: load on the failing API")
        for i, c in enumerate(contenders):
            ax.text(i, out[c]["upstream"], str(out[c]["upstream"]), ha="center", va="bottom")
        ax = flat[3]
        ax.set_visible(True)
        width = 0.38
        for j, q in enumerate(("p50", "p99")):
            ax.bar(
                [i + (j - 0.5) * width for i in range(len(contenders))],
                [out[c][q] * 1e3 for c in contenders],
                width,
                label=q,
                color=["#90caf9", "#1565c0"][j],
            )
        ax.set_xticks(range(len(contenders)), [labels[c] for c in contenders])
        ax.set_yscale("log")
        ax.set_ylabel("time to answer or error (ms)")
        ax.set_title("Outage: time to answer")
        ax.legend()

    cache = charts.get("cache tier")
    if cache:
        ax = flat[4]
        ax.set_visible(True)
        keys = [k for k in ("memory", "disk", "chain-memory", "chain-disk") if k in cache]
        width = 0.38
        for j, q in enumerate(("p50", "p99")):
            ax.bar(
                [i + (j - 0.5) * width for i in range(len(keys))],
                [cache[k][q] * 1e6 for k in keys],
                width,
                label=q,
                color=["#a5d6a7", "#2e7d32"][j],
            )
        for i, k in enumerate(keys):
            if "target" in cache[k]:
                ax.hlines(cache[k]["target"] * 1e6, i - 0.45, i + 0.45, colors="red")
        ax.set_xticks(range(len(keys)), keys, rotation=15)
        ax.set_ylabel("µs (red: target)")
        ax.set_title("Cache tier: time to a cached answer")
        ax.legend()

    rec = charts.get("recovery")
    if rec or (out and out.get("recovery_end_of_outage") is not None):
        ax = flat[5]
        ax.set_visible(True)
        labels_r, values = [], []
        if rec:
            labels_r.append("API back as\nbreakers open")
            values.append(rec["recovery"])
        if out and out.get("recovery_end_of_outage") is not None:
            labels_r.append("API back at\nend of outage")
            values.append(out["recovery_end_of_outage"])
        ax.bar(labels_r, values, color="#6a1b9a")
        reset = (rec or {}).get("reset_timeout") or (out or {}).get("reset_timeout")
        if reset:
            ax.axhline(reset, color="red", linestyle="--", label=f"reset_timeout {reset:g} s")
            ax.legend()
        ax.set_ylabel("seconds to the first live answer")
        ax.set_title("Recovery")

    fail = charts.get("failover")
    if fail:
        _failover_panel(flat[7], fail)

    mem = charts.get("memory")
    if mem:
        ax = flat[6]
        ax.set_visible(True)
        samples = mem["samples"]
        xs = [n for n, _ in samples]
        ax.plot(xs, [r / (1 << 20) for _, r in samples], marker="o", color="#c62828")
        ax.set_xlabel("requests")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"Memory: RSS (memory layer {mem['memory_items']} items)")
        ax.set_ylim(bottom=0)

    fig.suptitle(
        f"fallbackchain benchmarks — {machine['cpu']}, {machine['cores']} cores, "
        f"Python {machine['python']}, openai {machine['openai']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _failover_panel(ax: Any, data: dict[str, Any]) -> None:
    """Grouped bars: median time to an answer or an error per fault kind, per contender."""
    ax.set_visible(True)
    kinds = data["kinds"]
    labels = {"fallbackchain": "fallbackchain", "tutorial": "tutorial loop", "sdk": "SDK alone"}
    palette = {"fallbackchain": "#1565c0", "tutorial": "#ef6c00", "sdk": "#9e9e9e"}
    width = 0.27
    for j, name in enumerate(("fallbackchain", "tutorial", "sdk")):
        ax.barh(
            [i + (j - 1) * width for i in range(len(kinds))],
            data["times"][name],
            width,
            label=labels[name],
            color=palette[name],
        )
    ax.axvline(data["cap"], color="red", linestyle="--", label=f"cap {data['cap']:g} s")
    ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds to an answer or an error (median)")
    ax.set_title("Failover: time per fault kind (one fallback)")
    ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load()
    t0 = time.perf_counter()
    sections: list[Section] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fallbackchain-bench-") as tmp:
        settings = Settings(quick=args.quick, scratch=Path(tmp))
        for name in chosen:
            print(f"== {name}", flush=True)
            began = time.perf_counter()
            try:
                section = SCENARIOS[name](settings)
            except Exception:
                traceback.print_exc()
                failures.append(f"{name}: {traceback.format_exc().strip().splitlines()[-1]}")
                continue
            sections.append(section)
            for row in section.rows:
                flag = {True: "ok ", False: "MISS", None: "    "}[row.met]
                print(f"  [{flag}] {row.metric}: {row.chain}  {row.baseline}  {row.ratio}")
            print(f"   ({time.perf_counter() - began:.0f} s)", flush=True)
        recovery_row = recovery.outage_row(
            next((s.chart for s in sections if s.name == "outage"), {})
        )
        for section in sections:
            if section.name == "recovery" and recovery_row is not None:
                section.rows.append(recovery_row)
    elapsed = time.perf_counter() - t0
    markdown = args.out / "results.md"
    chart = args.out / "chart.png"
    write_markdown(
        markdown,
        sections,
        machine,
        quick=args.quick,
        started=started,
        elapsed=elapsed,
        load=(load_start, _load()),
        failures=failures,
    )
    write_chart(chart, sections, machine)
    for section in sections:
        if section.name == "failover":
            failover_md = args.out / "failover.md"
            failover.write_markdown(
                failover_md,
                section,
                machine,
                command="benchmarks/run.py"
                + (" --quick" if args.quick else "")
                + (f" --only {args.only}" if args.only else ""),
                started=started,
                elapsed=elapsed,
                load=(load_start, _load()),
            )
            print(f"wrote {failover_md}")
    print(f"wrote {markdown}")
    print(f"wrote {chart}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
