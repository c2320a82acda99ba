"""A throwaway ``redis-server`` for tests: started on a free loopback port, never persisted.

Tests import :class:`RedisServer` (and :func:`require_redis_server`) from here and define
their own fixtures. When the ``redis-server`` binary is missing, tests are skipped, except
under ``CI=true``, where they fail: CI must exercise the shared backends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port", "require_redis_package", "require_redis_server"]

BINARY = "redis-server"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_redis_package() -> None:
    """Call at module level: skip the module without the ``redis`` client (fail under CI)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        message = "the redis client package is not installed (pip install redis)"
        if _in_ci():
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def require_redis_server() -> str:
    """The path of ``redis-server``; skip the test without it (fail under ``CI=true``)."""
    path = shutil.which(BINARY)
    if path is not None:
        return path
    message = f"{BINARY} not found on PATH (install Redis >= 6 to run the shared-backend tests)"
    if _in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` subprocess on 127.0.0.1: no RDB, no AOF, its own work directory.

    :meth:`stop` and :meth:`start` again reuse the same port (a "restart"); :meth:`pause`
    and :meth:`resume` freeze it with SIGSTOP/SIGCONT (it accepts connections, answers
    nothing: a hung Redis).
    """

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self._workdir = tempfile.mkdtemp(prefix="fc-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(self._workdir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    self._workdir,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); idempotent. The port stays this server's."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
                proc.terminate()
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel but never answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def client(self):  # -> redis.Redis (import kept lazy: the module must import without redis)
        import redis

        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def flushall(self) -> None:
        with self.client() as r:
            r.flushall()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return " | ".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
