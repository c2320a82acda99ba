"""The library proper never imports its test bed (#12): the demo lives in ``testing/``.

Only one line may reach it, lazily: the ``fallbackchain demo`` command's import of
``run_demo``. Any other import of ``fallbackchain.testing`` from outside ``testing/``,
at module level or inside a function, fails this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fallbackchain

PACKAGE = Path(fallbackchain.__file__).parent
TESTING = PACKAGE / "testing"

Hit = tuple[str, str, tuple[str, ...]]
"""(module path inside the package, the module imported, the names imported from it)."""

# The one import allowed: `fallbackchain demo`'s lazy import of the story.
ALLOWED: set[Hit] = {("cli/_demo_command.py", "fallbackchain.testing", ("run_demo",))}


def _target(module: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.parent.relative_to(PACKAGE.parent).parts
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *filter(None, [node.module])])


def _is_test_bed(name: str) -> bool:
    return name == "fallbackchain.testing" or name.startswith("fallbackchain.testing.")


def imports_of_the_test_bed(source: str, module: Path) -> list[Hit]:
    """Every import in ``source`` (the text of ``module``) that reaches ``fallbackchain.testing``."""
    where = module.relative_to(PACKAGE).as_posix()
    hits: list[Hit] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _target(module, node)
            names = tuple(alias.name for alias in node.names)
            targets = [(target, names)]
            if not _is_test_bed(target):  # `from . import testing` imports the test bed too
                targets = [(f"{target}.{name}", ()) for name in names]
        else:
            continue
        hits.extend((where, name, names) for name, names in targets if _is_test_bed(name))
    return hits


@pytest.mark.slow  # parses every module: about 0.3 s
def test_no_module_outside_testing_imports_the_test_bed() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if TESTING not in p.parents]
    assert len(modules) > 20  # the walk really saw the package
    hits = [hit for m in modules for hit in imports_of_the_test_bed(m.read_text("utf-8"), m)]
    assert [hit for hit in hits if hit not in ALLOWED] == []
    assert hits == sorted(ALLOWED), "the demo command's lazy import is where the test expects"


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import fallbackchain.testing\n", "chain/_x.py"),
        ("from fallbackchain.testing import FaultServer\n", "chain/_x.py"),
        ("def f():\n    from .testing import Fault\n", "_x.py"),
        ("from . import testing\n", "_x.py"),
        ("from .testing._server import FaultServer\n", "_x.py"),
        ("from ..testing import Fault\n", "chain/_x.py"),
    ],
)
def test_each_spelling_of_an_import_of_the_test_bed_is_caught(source: str, module: str) -> None:
    assert imports_of_the_test_bed(source, PACKAGE / module)


def test_other_imports_are_not_caught() -> None:
    source = "import fallbackchain\nfrom . import _timing\nfrom .testing import x\n"
    # In chain/, `.testing` would be fallbackchain.chain.testing, not the test bed.
    assert imports_of_the_test_bed(source, PACKAGE / "chain" / "_x.py") == []


@pytest.mark.slow  # a subprocess
def test_the_whole_public_api_and_the_cli_load_without_the_test_bed() -> None:
    code = (
        "import sys, fallbackchain, fallbackchain.cli, fallbackchain.cli._main\n"
        "for name in fallbackchain.__all__: getattr(fallbackchain, name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('fallbackchain.testing')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
