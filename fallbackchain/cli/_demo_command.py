"""``fallbackchain demo``: the resilience story against local fault servers (no API key).

A thin command: the story lives in the test bed (``fallbackchain.testing``) and loads
only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._output import PROG, ExitCode, err

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    # The library's one import of its test bed, lazy: the demo lives there (#12).
    from ..testing import run_demo  # noqa: PLC0415

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    record = Path(args.record) if args.record else None
    result = run_demo(sys.stdout, color=color, record=record)
    if record is not None:
        err(f"{PROG}: events written to {record}")
    return ExitCode.OK if result.upstream_during_open_breakers == 0 else ExitCode.FAILED
