"""The config templates shipped inside the package, and the config ``fallbackchain init`` writes.

The templates are the files of the repository's ``config/`` directory, installed as package
data under ``fallbackchain/templates/`` (so they exist after ``pip install``, not only in a
checkout). :func:`render_config` starts from one of them, comments included, and sets the
primary model, endpoint and key variable and appends ``[[fallbacks]]`` entries; the caller
validates the text with the real config loader before writing it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = [
    "DEFAULT_TEMPLATE",
    "FallbackSpec",
    "parse_fallback",
    "read_template",
    "render_config",
    "template_names",
]

DEFAULT_TEMPLATE: Final = "fallbackchain"
"""The production defaults, every key present and commented."""

_SUFFIX: Final = ".toml"

# A TOML assignment whose value is a basic string or a bare scalar, with an optional comment.
_ASSIGNMENT = re.compile(
    r'^(?P<key>[A-Za-z0-9_-]+)(?P<eq>\s*=\s*)(?P<value>"(?:[^"\\]|\\.)*"|[^\s#]+)'
    r"(?P<gap>\s*)(?P<comment>#.*)?$"
)
_HEADER = re.compile(r"^\s*\[\[?\s*(?P<name>[A-Za-z0-9_.-]+)\s*\]\]?")

# "NAME=MODEL" or "NAME=MODEL@URL": the URL starts at the last "@http(s)://", so a model
# name may itself contain "@" (as some providers' versioned names do).
_FALLBACK = re.compile(r"^(?P<name>[^=\s]+)=(?P<model>.+?)(?:@(?P<url>https?://\S+))?$")


def _templates() -> resources.abc.Traversable:
    return resources.files(__package__ or "fallbackchain").joinpath("templates")


def template_names() -> list[str]:
    """The names of the shipped templates (file names without ``.toml``), sorted."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _templates().iterdir()
        if entry.name.endswith(_SUFFIX)
    )


def read_template(name: str) -> str:
    """The text of the template ``name``; ``KeyError`` for an unknown name."""
    if name not in template_names():
        raise KeyError(name)
    return _templates().joinpath(name + _SUFFIX).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    """One ``--fallback NAME=MODEL[@URL]`` of ``fallbackchain init``."""

    name: str
    model: str
    base_url: str = ""  # "": the primary's endpoint


def parse_fallback(text: str) -> FallbackSpec:
    """Parse ``NAME=MODEL`` or ``NAME=MODEL@URL``; ``ValueError`` saying what is wrong."""
    match = _FALLBACK.match(text.strip())
    if match is None:
        raise ValueError(
            f"expected NAME=MODEL or NAME=MODEL@URL (URL starting with http:// or https://), "
            f"got {text!r}"
        )
    return FallbackSpec(match["name"], match["model"], match["url"] or "")


def _toml_string(value: str) -> str:
    # JSON's string escapes are a subset of TOML basic strings'.
    return json.dumps(value, ensure_ascii=False)


def _set_key(lines: list[str], section: str, key: str, value: str) -> None:
    """Set ``key`` of ``[section]`` to the TOML ``value``, keeping the line's comment aligned.

    The line is added at the end of the section if the template lacks the key.
    """
    current: str | None = None
    last_in_section: int | None = None
    for index, line in enumerate(lines):
        header = _HEADER.match(line)
        if header is not None:
            current = header["name"]
            if current == section:
                last_in_section = index
            continue
        if current != section:
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            last_in_section = index
        match = _ASSIGNMENT.match(line)
        if match is None or match["key"] != key:
            continue
        head = f"{key}{match['eq']}{value}"
        if match["comment"]:
            column = len(match["key"] + match["eq"] + match["value"] + match["gap"])
            head += " " * max(1, column - len(head)) + match["comment"]
        lines[index] = head
        return
    if last_in_section is None:
        lines.extend(["", f"[{section}]", f"{key} = {value}"])
    else:
        lines.insert(last_in_section + 1, f"{key} = {value}")


def _commented(assignment: str, comment: str) -> str:
    """``assignment`` with ``comment`` at column 42, or one space after a longer assignment."""
    return assignment + " " * max(1, 41 - len(assignment)) + comment


def _fallback_block(spec: FallbackSpec) -> list[str]:
    url = _toml_string(spec.base_url)
    return [
        "",
        "[[fallbacks]]                            # tried after the primary's live tiers, in order",
        _commented(f"name = {_toml_string(spec.name)}", "# the answer's source, and its breaker"),
        f"model = {_toml_string(spec.model)}",
        _commented(f"base_url = {url}", '# any OpenAI-compatible endpoint; "" = the primary\'s'),
        _commented(
            '# api_key_env = "FALLBACK_API_KEY"',
            "# the NAME of its key variable; default: the primary's",
        ),
        "stream = true                            # false: one non-streamed completion per attempt",
    ]


def render_config(
    template: str = DEFAULT_TEMPLATE,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    fallbacks: tuple[FallbackSpec, ...] = (),
) -> str:
    """The text of a commented config made from ``template``.

    The given ``[openai]`` settings replace the template's (``None`` keeps them) and one
    ``[[fallbacks]]`` table per spec is appended. Not validated here: the caller loads it
    with :func:`~fallbackchain.load_config`.
    """
    lines = read_template(template).splitlines()
    note = f"# Written by `fallbackchain init` from the {template!r} template."
    lines.insert(0, note)
    for key, value in (("model", model), ("base_url", base_url), ("api_key_env", api_key_env)):
        if value is not None:
            _set_key(lines, "openai", key, _toml_string(value))
    for spec in fallbacks:
        lines.extend(_fallback_block(spec))
    return "\n".join(lines) + "\n"
