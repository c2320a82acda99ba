"""The cache directory: private to this user, or refused.

What a caller can rely on: :func:`prepare_directory` creates missing directories ``0700`` and
raises :class:`ConfigError` (naming the path and the reason) for an existing directory owned by
another user or writable by group or others, reached through another user's symlink, or below
a directory every user can write that is not sticky. :func:`create_private` and
:func:`make_private` give the cache's files mode ``0600``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat

from .._errors import ConfigError

__all__ = ["create_private", "make_private", "prepare_directory"]


def prepare_directory(path: str) -> None:
    """Create ``path`` (each new directory ``0700``) or check the existing one.

    Raises :class:`ConfigError` naming the path and the reason when the directory is not safe
    to hold answers (see :func:`_unsafe_reason`), and :class:`OSError` when it cannot be made.
    """
    missing: list[str] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "cache directory is not a directory")
    reason = _unsafe_reason(path)
    if reason is not None:
        raise ConfigError(
            f"refusing the cache directory {path}: {reason}; other users could plant or read "
            "answers (make it yours and private: chmod 700, or choose another directory)",
            key="cache.directory",
        )


def _unsafe_reason(path: str) -> str | None:
    """Why the existing directory ``path`` must not hold a cache, or None when it is safe.

    Safe means: it is owned by this user and writable by no one else; no symlink on the way
    to it belongs to another user (root excepted); and no directory above it is writable by
    others unless it is sticky (like ``/tmp``), so it cannot be swapped for another.
    """
    if os.name != "posix":  # pragma: no cover - POSIX permissions only
        return None
    uid = os.geteuid()
    current = os.sep
    for part in pathlib.PurePath(path).parts[1:]:
        current = os.path.join(current, part)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, uid):
            return f"{current} is a symlink owned by another user (uid {info.st_uid})"
    real = os.path.realpath(path)
    via = "" if real == path else f" (the symlink leads to {real})"
    info = os.stat(real)
    if info.st_uid != uid:
        return f"it is owned by another user (uid {info.st_uid}, not {uid}){via}"
    if info.st_mode & 0o022:
        return f"it is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}){via}"
    for parent in pathlib.PurePath(real).parents:
        mode = os.stat(parent).st_mode
        if mode & 0o002 and not mode & stat.S_ISVTX:
            return (
                f"{parent}, above it, is writable by every user "
                f"(mode {stat.S_IMODE(mode):04o}){via}"
            )
    return None


def make_private(path: str) -> None:
    """Make an existing file of ours ``0600``; best effort (a read-only filesystem cannot)."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.lstat(path).st_mode) & 0o077:
            os.chmod(path, 0o600, follow_symlinks=False)


def create_private(path: str) -> None:
    """Create ``path`` empty with mode ``0600`` unless it exists (SQLite then keeps the mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(
            os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
            )
        )
