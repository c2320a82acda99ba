"""Run a standalone :class:`~fallbackchain.testing.FaultServer` until Ctrl-C, or the demo.

``python -m fallbackchain.testing demo [--record FILE]`` tells the resilience story
(the same as ``fallbackchain demo``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ._server import FaultServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fallbackchain.testing",
        description=(
            "Serve an OpenAI-compatible API (POST /v1/chat/completions, POST /v1/responses, "
            "GET /v1/responses/{id}, GET /v1/models) with deterministic answers, for trying "
            "clients against. "
            "Every request gets a normal answer; scripted faults are available from "
            "Python via fallbackchain.testing.FaultServer."
        ),
        epilog=(
            "Example: python -m fallbackchain.testing --port 8000, then point a client at "
            "the printed base URL with any API key. "
            "'python -m fallbackchain.testing demo [--record FILE]' runs the resilience "
            "story instead (the same as 'fallbackchain demo')."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--words",
        type=int,
        default=12,
        metavar="N",
        help="pseudo-words per answer after the 'Answer from MODEL:' prefix (default: %(default)s)",
    )
    return parser


def _demo(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fallbackchain.testing demo",
        description="The resilience story against local fault servers (no API key).",
    )
    parser.add_argument("--record", metavar="FILE", help="write every event as JSON Lines to FILE")
    args = parser.parse_args(argv)
    from ._demo import run_demo  # noqa: PLC0415 - the story loads the whole chain

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    record = Path(args.record) if args.record else None
    result = run_demo(sys.stdout, color=color, record=record)
    return 0 if result.upstream_during_open_breakers == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until interrupted (or run the demo) and return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        return _demo(argv[1:])
    args = _parser().parse_args(argv)
    if args.words < 0:
        _parser().error("--words must be >= 0")
    try:
        server = FaultServer(words=args.words, host=args.host, port=args.port).start()
    except OSError as exc:
        sys.stderr.write(f"cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    with server:
        try:  # Ctrl-C may come while the lines below are written (a client saw the first)
            sys.stdout.write(f"FaultServer listening; base_url={server.base_url}\n")
            sys.stdout.write("Press Ctrl-C to stop.\n")
            sys.stdout.flush()
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.stdout.write("stopping\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
