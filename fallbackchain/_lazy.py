"""Names a package offers but loads on first use (PEP 562 module ``__getattr__``).

An app pays at import only for the parts it touches: the top-level package, the async driver,
the drop-in surfaces, the cache's rows and disk cache, the Redis classes (which import the
redis client) and the demo load their module when a name of theirs is first asked for. This
module imports nothing but ``importlib`` and typing names, so any package may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["loaded_on_first_use"]


def loaded_on_first_use(
    namespace: dict[str, Any], homes: Mapping[str, str]
) -> Callable[[str], Any]:
    """A package's ``__getattr__`` giving each name of ``homes`` from the module that defines it.

    ``namespace`` is the package's ``globals()``; ``homes`` maps a name to that package's
    module defining it (``"._redis_store"``). The module is imported when the name is first
    asked for, and the value is then kept in ``namespace``, so later reads are plain attribute
    reads. Any other name raises ``AttributeError``, as for a module without ``__getattr__``.
    """
    package = namespace["__name__"]

    def get(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(home, package), name)
        namespace[name] = value
        return value

    return get
