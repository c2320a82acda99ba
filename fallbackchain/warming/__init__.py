"""Warming the fallback cache from a list of prompts: ``warm()``, ``awarm()`` and their input.

Named ``warming`` because ``fallbackchain.warm`` is the function. What the rest of the package
(the ``warm`` command) uses from here; each module's docstring says what a caller can rely on:
``_prompts.py`` the input, ``_outcome.py`` what counts as warmed, ``_pacing.py`` never
hammering, ``_run.py`` skip, resume and dry run, ``_warm.py`` the two drivers.
"""

from ._prompts import (
    ALLOWED_KEYS,
    RESPONSES_KEYS,
    WarmRequest,
    load_prompts,
    parse_prompt,
    parse_prompts,
)
from ._run import WARM_RECORD, WarmOptions, WarmOutcome, WarmProgress, WarmReport
from ._warm import awarm, warm

__all__ = [
    "ALLOWED_KEYS",
    "RESPONSES_KEYS",
    "WARM_RECORD",
    "WarmOptions",
    "WarmOutcome",
    "WarmProgress",
    "WarmReport",
    "WarmRequest",
    "awarm",
    "load_prompts",
    "parse_prompt",
    "parse_prompts",
    "warm",
]
