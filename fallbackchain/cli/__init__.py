"""The ``fallbackchain`` command: write and check a config, show status, warm and manage the cache.

::

    fallbackchain init [PATH] [--template NAME] [--model MODEL] [--base-url URL]
                              [--api-key-env NAME] [--fallback NAME=MODEL[@URL]]... [--force]
    fallbackchain check-config [CONFIG]
    fallbackchain status
    fallbackchain warm PROMPTS [--concurrency N] [--refresh] [--dry-run] [--strict]
                               [--max-wait SECONDS]
    fallbackchain cache stats [--json]
    fallbackchain cache clear [--yes]
    fallbackchain cache prune
    fallbackchain cache export FILE      (FILE "-" is stdout)
    fallbackchain cache import FILE      (FILE "-" is stdin)
    fallbackchain demo [--record FILE]
    fallbackchain --version

What a caller (a script, CI) can rely on:

* **The config file.** Every command that reads one (all but ``demo``) takes ``--config
  CONFIG``; without it, ``$FALLBACKCHAIN_CONFIG``; without that, ``./fallbackchain.toml``.
  ``check-config CONFIG`` and ``init PATH`` take it positionally too. ``init`` writes it
  (never over an existing file without ``--force``), and what it writes passes
  ``check-config``.
* **status** exits 1 when state the config uses cannot be read: a Redis server holding
  shared breakers or the cache, or a cache directory that cannot be opened.

* **Exit status.** 0: everything worked. 1: the command ran but something failed (a prompt
  was not warmed, a line was invalid, an import line was bad, a clear was not confirmed).
  2: a usage or input error stopped it before it did anything (bad arguments, an unreadable
  or invalid config, a missing prompts file, a missing API key, any bad line with
  ``--strict``). 130: interrupted (Ctrl-C or SIGTERM); whatever was written is kept and the
  same command resumes.
* **Errors** are one line on stderr with no traceback: ``fallbackchain: error: ...`` for the
  error that stopped the command, ``FILE:LINE: ...`` for a bad or failed line.
* **Output.** Results (the summary, ``stats``, dry-run plans, exported JSON Lines on ``-``)
  go to stdout; progress goes to stderr: a redrawn bar when stderr is a terminal, one plain
  line per prompt otherwise. No secret is ever printed (``check-config`` shows the *name* of
  the API key variable and whether it is set, and masks credentials in URLs).
"""

from ._main import CONFIG_ENV, DEFAULT_CONFIG, main

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "main"]
