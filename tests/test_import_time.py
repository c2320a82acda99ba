"""What ``import fallbackchain`` loads: structure, not a stopwatch (benchmarks/import_time.py times it).

Each check runs in a fresh interpreter, so nothing this test session imported counts. The
redis client (and OpenTelemetry, which redis >= 8 imports when it is installed) must load only
when a config asks for Redis; pybreaker must keep working for an app that uses its own Redis
storage.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap

import pytest

import fallbackchain

from .conftest import ROOT
from .redis_server import RedisServer, require_redis_server

OPTIONAL = ("redis", "opentelemetry")

# The test environment has both installed, or these tests would prove nothing.
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in OPTIONAL),
    reason="needs redis and opentelemetry installed (the dev extra)",
)


def run_python(code: str, *, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )


LOADED = "print(','.join(m for m in ('redis', 'opentelemetry') if m in sys.modules) or '-')"


def loaded_after(code: str, **kwargs: str) -> str:
    result = run_python("import sys\n" + textwrap.dedent(code) + "\n" + LOADED, **kwargs)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_import_fallbackchain_loads_neither_redis_nor_opentelemetry():
    assert loaded_after("import fallbackchain") == "-"


@pytest.mark.slow  # a fresh interpreter: over 0.3 s
def test_load_config_alone_loads_neither_the_chain_nor_the_toml_parser():
    code = """
        from fallbackchain import load_config
        print(",".join(m for m in ("fallbackchain.chain", "tomllib") if m in sys.modules) or "-")
    """
    result = run_python("import sys\n" + textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "-"


@pytest.mark.slow
def test_every_public_name_loads_neither_redis_nor_opentelemetry():
    code = """
        import fallbackchain
        for name in fallbackchain.__all__:
            getattr(fallbackchain, name)
        import fallbackchain.testing
    """
    assert loaded_after(code) == "-"


@pytest.mark.slow
def test_a_chain_on_memory_breakers_and_the_disk_cache_loads_neither(tmp_path):
    code = f"""
        import os
        os.environ["FC_IMPORT_TEST_KEY"] = "sk-test"
        from fallbackchain import ChainConfig, FallbackChain, OpenAIConfig, CacheConfig
        config = ChainConfig(
            openai=OpenAIConfig(base_url="http://127.0.0.1:9/v1", api_key_env="FC_IMPORT_TEST_KEY"),
            cache=CacheConfig(directory={str(tmp_path / "cache")!r}),
        )
        with FallbackChain(config) as chain:
            chain.cache.stats()
    """
    assert loaded_after(code) == "-"


@pytest.mark.slow
def test_a_config_that_asks_for_redis_loads_it(tmp_path):
    """The other side of the coin: the checks above can see redis when it is loaded."""
    code = """
        from fallbackchain import BreakerConfig, ChainConfig
        from fallbackchain._backends import gate_store
        gate_store(ChainConfig(breaker=BreakerConfig(storage="redis")), "stream")
    """
    assert loaded_after(code).split(",")[0] == "redis"


@pytest.mark.slow
def test_pybreaker_keeps_its_own_redis_storage_after_fallbackchain_hid_redis():
    """An app using pybreaker.CircuitRedisStorage next to fallbackchain loses nothing."""
    require_redis_server()
    with RedisServer() as server:
        code = f"""
            import sys
            import fallbackchain.breaker._gate
            assert "redis" not in sys.modules
            import pybreaker
            import redis
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, redis.Redis(port={server.port}), namespace="imp"
            )
            breaker = pybreaker.CircuitBreaker(fail_max=2, state_storage=storage)
            storage.increment_counter()
            assert storage.counter == 1, storage.counter
            print("ok", pybreaker.HAS_REDIS_SUPPORT)
            sys.stdout.flush()
            sys.stdin.readline()  # the test stops the server now
            # A Redis error is caught by pybreaker (its RedisError name is bound): the
            # fallback state, not a NameError.
            print("state", storage.state)
        """
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first.strip() == "ok True", first + proc.communicate(timeout=30)[1]
        server.stop()
        out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "state closed", out + err
    assert "RedisError" in err  # pybreaker logged the failure it caught


@pytest.mark.slow  # a fresh interpreter: about 0.3 s
def test_nothing_is_hidden_when_redis_is_already_imported():
    code = """
        import redis
        import fallbackchain.breaker._gate
        import pybreaker
        assert pybreaker.HAS_REDIS_SUPPORT is True
        assert pybreaker.RedisError is redis.exceptions.RedisError
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow  # a fresh interpreter: over 0.3 s
def test_redis_is_hidden_from_the_importing_thread_only():
    """Another thread importing redis meanwhile gets it; only pybreaker's import is fooled."""
    code = """
        import sys, threading
        from fallbackchain._optional import pybreaker_without_redis
        seen = {}
        def other():
            import redis
            seen["other"] = redis.__name__
        with pybreaker_without_redis():
            try:
                import redis.exceptions
            except ImportError:
                seen["this"] = "hidden"
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        assert seen == {"other": "redis", "this": "hidden"}, seen
        assert not any(type(f).__name__ == "_HideFromThread" for f in sys.meta_path)
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr


# -- the lazy package ---------------------------------------------------------------------------


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse((ROOT / "fallbackchain" / "__init__.py").read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update({alias.name: str(stmt.module) for alias in stmt.names})
    return names


def test_the_lazy_lookup_and_the_type_checking_imports_agree():
    declared = _type_checking_imports()
    assert declared, "no TYPE_CHECKING imports found in fallbackchain/__init__.py"
    assert set(declared) == set(fallbackchain.__all__) - {"__version__"}
    assert len(fallbackchain.__all__) == len(set(fallbackchain.__all__))
    for name, module in declared.items():
        # the table names the same home as the import type checkers read
        assert fallbackchain._HOME_OF[name] == f".{module.lstrip('.')}", name
        home = importlib.import_module(f"fallbackchain.{module.lstrip('.')}")
        assert name in home.__all__, name  # a public name is public where it lives too
        assert getattr(fallbackchain, name) is getattr(home, name), name


def test_type_checkers_see_every_public_name_as_re_exported():
    """``__all__`` is built from the table, so each TYPE_CHECKING import says ``X as X``."""
    tree = ast.parse((ROOT / "fallbackchain" / "__init__.py").read_text(encoding="utf-8"))
    plain = [
        alias.name
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
        if alias.asname != alias.name
    ]
    assert plain == []


@pytest.mark.slow  # a fresh interpreter: over 0.3 s
def test_a_name_loaded_on_first_use_is_then_a_plain_attribute():
    code = """
import fallbackchain
assert "ChainConfig" not in vars(fallbackchain)
config_class = fallbackchain.ChainConfig
assert vars(fallbackchain)["ChainConfig"] is config_class
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        fallbackchain.NoSuchThing  # noqa: B018
    assert "FallbackChain" in dir(fallbackchain)


def test_star_import_gives_every_public_name():
    namespace: dict[str, object] = {}
    exec("from fallbackchain import *", namespace)
    assert set(fallbackchain.__all__) <= set(namespace)


# -- the import graph ---------------------------------------------------------------------------


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import of a fallbackchain module by another, wherever it is written (module level,
    inside a function, or under TYPE_CHECKING): a cycle at any of those is a cycle to a reader."""
    paths = {_module_name(p): p for p in (ROOT / "fallbackchain").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "fallbackchain")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.split(".")[0] != "fallbackchain":
                    continue
                submodules = {f"{target}.{a.name}" for a in node.names} & set(paths)
                edges.update(submodules or {target})  # `from . import _x` imports _x only
        graph[name] = edges - {name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.slow
def test_errors_and_results_do_not_import_each_other():
    graph = _import_graph()
    assert "fallbackchain._results" not in graph["fallbackchain._errors"]
    assert _cycle_through(graph, "fallbackchain._errors") is None


@pytest.mark.slow
def test_no_module_of_the_package_is_part_of_an_import_cycle():
    graph = _import_graph()
    cycles = [c for name in sorted(graph) if (c := _cycle_through(graph, name))]
    assert not cycles, cycles[0]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["fallbackchain._errors", "fallbackchain._results"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    result = run_python(f"import {module}\nfrom {module} import *\n")
    assert result.returncode == 0, result.stderr
