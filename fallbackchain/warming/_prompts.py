"""The prompts to warm: reading and checking a prompts file, or prompts given in code.

What a caller can rely on:

* **The format.** JSON Lines. Each line is either the keyword arguments of
  ``chat.completions.create`` (``messages``, optional ``model`` (default: the config's), and any
  other ``create`` argument except ``stream``, ``stream_options`` and ``timeout``, which the
  chain sets) or the shorthand ``{"prompt": "text"}`` (one user message). Blank lines and lines
  starting with ``#`` are skipped.
* **Responses requests.** A line with ``input``, or with ``"api": "responses"``, is the keyword
  arguments of ``responses.create`` (``input`` and/or ``prompt`` or ``previous_response_id``;
  any other argument except ``stream`` and ``timeout``); it is warmed through
  ``chain.responses``, under the key ``chain.responses.create`` reads. ``"api": "chat"`` (the
  default without ``input``) marks a chat line. A ``conversation`` request is refused: the
  chain never caches one.
* **Only what a request can carry.** Every number must be finite and every string valid Unicode
  (no lone surrogate): the real run could not send anything else, so the dry run and the real
  run both refuse such a line here, with the same message.
* **One error per bad line.** :func:`parse_prompts` is the one pure function that validates
  them; every bad line becomes a :class:`LineError` naming the file and line (``FILE:LINE:
  reason``), and the valid lines are returned all the same. :func:`strict_error` turns the bad
  lines into the one :class:`InputFileError` a strict run raises before anything is sent.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from openai.resources.chat.completions import Completions
from openai.resources.responses import Responses

from ..cache import InputFileError, LineError, read_jsonl

__all__ = [
    "ALLOWED_KEYS",
    "IN_CODE",
    "RESPONSES_KEYS",
    "PromptSource",
    "WarmRequest",
    "load_prompts",
    "parse_prompt",
    "parse_prompts",
    "resolve_prompts",
    "strict_error",
]

IN_CODE: Final = "<prompts>"
"""The ``file`` of prompts given in code rather than read from a file."""

_SET_BY_CHAIN: Final = frozenset({"stream", "stream_options", "timeout"})
ALLOWED_KEYS: Final[frozenset[str]] = frozenset(
    name
    for name in inspect.signature(Completions.create).parameters
    if name != "self" and name not in _SET_BY_CHAIN
) | {"prompt"}
"""Keys a prompt line may have: ``prompt``, or ``chat.completions.create``'s arguments minus
``stream``, ``stream_options`` and ``timeout``."""

_SET_BY_CHAIN_RESPONSES: Final = frozenset({"stream", "timeout"})
RESPONSES_KEYS: Final[frozenset[str]] = frozenset(
    name
    for name in inspect.signature(Responses.create).parameters
    if name != "self" and name not in _SET_BY_CHAIN_RESPONSES
) | {"api"}
"""Keys a Responses line may have: ``api``, and ``responses.create``'s arguments minus
``stream`` and ``timeout``."""

_APIS: Final = ("chat", "responses")
_RESPONSES_INPUTS: Final = ("input", "prompt", "previous_response_id")


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """One validated prompt: ``params`` are the ``create`` keyword arguments.

    ``api`` is ``"chat"`` (``chat.completions.create``: ``params`` always has ``messages``) or
    ``"responses"`` (``responses.create``: ``params`` never has ``api``). ``params`` has
    ``model`` only when the line gave one. ``line`` is the 1-based line number in ``file`` (for
    prompts given in code: the position, and ``file == "<prompts>"``).
    """

    line: int
    params: Mapping[str, Any]
    file: str = IN_CODE
    api: str = "chat"

    @property
    def messages(self) -> Sequence[Any]:
        """The messages to send (a chat request only)."""
        messages: Sequence[Any] = self.params["messages"]
        return messages

    @property
    def model(self) -> str | None:
        """The model the line asked for, or ``None`` for the chain's configured model."""
        model = self.params.get("model")
        return model if isinstance(model, str) else None

    @property
    def options(self) -> dict[str, Any]:
        """Every parameter except ``messages`` and ``model``."""
        return {k: v for k, v in self.params.items() if k not in ("messages", "model")}

    def sent(self, default_model: str) -> dict[str, Any]:
        """The ``create`` arguments as sent: ``model`` first (``default_model`` if none given)."""
        sent: dict[str, Any] = {"model": self.model or default_model}
        if self.api == "chat":
            sent["messages"] = self.params["messages"]
        return sent | self.options

    @property
    def where(self) -> str:
        """``"FILE:LINE"``."""
        return f"{self.file}:{self.line}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def _unknown_keys_message(
    unknown: Sequence[str], allowed: frozenset[str] = ALLOWED_KEYS, api: str = "chat"
) -> str:
    parts = []
    set_by_chain = _SET_BY_CHAIN if api == "chat" else _SET_BY_CHAIN_RESPONSES
    for key in unknown:
        if key in set_by_chain:
            parts.append(f"{key!r} (set by the chain; remove it)")
            continue
        if api == "responses" and key == "messages":
            parts.append("'messages' (a chat key: a Responses request takes 'input')")
            continue
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    return f"unknown {noun} {', '.join(parts)}"


class _BadPromptError(ValueError):
    """A prompt is not valid; the message is the one-line reason."""


def parse_prompt(value: Any, *, file: str = IN_CODE, line: int = 1) -> WarmRequest:
    """Validate one prompt (a parsed JSON value) into a :class:`WarmRequest`.

    Raises :class:`ValueError` with a one-line reason (without the file and line) when it is not
    an object, has unknown keys, has both or neither of ``prompt`` and ``messages``, when
    ``prompt``, ``messages`` or ``model`` has the wrong shape, or when any value is a number
    that is not finite or a string with a lone surrogate (the reason names where it is).
    """
    if not isinstance(value, Mapping):
        raise _BadPromptError(f"expected a JSON object, got {_json_type(value)}")
    api = value.get("api", "responses" if "input" in value else "chat")
    if api not in _APIS:
        raise ValueError(f"'api' must be \"chat\" or \"responses\", got {json.dumps(api)}")
    if api == "responses":
        return _parse_responses(value, file=file, line=line)
    value = {k: v for k, v in value.items() if k != "api"}
    keys = [k for k in value if not isinstance(k, str) or k not in ALLOWED_KEYS]
    if keys:
        raise ValueError(_unknown_keys_message([str(k) for k in keys]))
    params = dict(value)
    if "prompt" in params and "messages" in params:
        raise ValueError("give either 'prompt' or 'messages', not both")
    if "prompt" in params:
        prompt = params.pop("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"'prompt' must be a non-empty string, got {_json_type(prompt)}")
        params["messages"] = [{"role": "user", "content": prompt}]
    elif "messages" not in params:
        raise ValueError("needs 'messages' (a list of messages) or 'prompt' (a string)")
    messages = params["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array of message objects")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _BadPromptError(f"messages[{index}] must be an object, got {_json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{index}] needs a 'role' string")
    if "model" in params:
        model = params["model"]
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"'model' must be a non-empty string, got {_json_type(model)}")
    _check_sendable(value)
    return WarmRequest(line=line, params=params, file=file)


def _parse_responses(value: Mapping[Any, Any], *, file: str, line: int) -> WarmRequest:
    """:func:`parse_prompt` for a Responses line (``"api": "responses"``, or ``input`` given)."""
    keys = [k for k in value if not isinstance(k, str) or k not in RESPONSES_KEYS]
    if keys:
        raise ValueError(
            _unknown_keys_message([str(k) for k in keys], RESPONSES_KEYS, "responses")
            + " for a Responses request"
        )
    params = {k: v for k, v in value.items() if k != "api"}
    if params.get("conversation") is not None:
        raise ValueError(
            "a 'conversation' request is never cached (the conversation grows with every "
            "turn), so it cannot be warmed; use 'input' or 'previous_response_id'"
        )
    if "input" in params:
        given = params["input"]
        if not (isinstance(given, str) and given.strip()) and not (
            isinstance(given, list) and given
        ):
            raise ValueError(
                "'input' must be a non-empty string or a non-empty array of input items, "
                f"got {_json_type(given)}"
            )
    if not any(params.get(name) for name in _RESPONSES_INPUTS):
        raise ValueError(
            "a Responses request needs 'input' (a string or a list of input items), "
            "'prompt' or 'previous_response_id'"
        )
    if "model" in params:
        model = params["model"]
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"'model' must be a non-empty string, got {_json_type(model)}")
    _check_sendable(value)
    return WarmRequest(line=line, params=params, file=file, api="responses")


def _path_step(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"  # ASCII-escaped: a lone surrogate prints as \udxxx


def _unsendable(value: object) -> str | None:
    """Why ``value`` cannot go into a request (a phrase), or None when it can."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"is out of range ({value!r}): a request can only carry finite numbers"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # only a lone surrogate cannot be UTF-8
            return (
                f"contains {value[exc.start]!a} at position {exc.start}, a lone "
                "surrogate: not valid Unicode, so the request could not be sent"
            )
    return None


def _check_sendable(value: Mapping[Any, Any]) -> None:
    """Raise ValueError when a string or number anywhere in ``value`` cannot be sent.

    The real run would fail such a prompt (the SDK cannot encode it), so the dry run and the
    real run both refuse it here, naming where it is. Iterative, so a deeply nested value
    cannot exhaust the stack.
    """
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        children: list[tuple[object, object]] = []
        if isinstance(item, Mapping):
            for key in item:
                problem = _unsendable(key)
                if problem is not None:
                    where = f"a key in '{path}'" if path else "a top-level key"
                    raise ValueError(f"{where} {problem}")
            children = list(item.items())
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        else:
            problem = _unsendable(item)
            if problem is not None:
                raise ValueError(f"'{path}' {problem}")
        stack.extend((_path_step(path, key), child) for key, child in reversed(children))


def parse_prompts(
    lines: Iterable[str], *, file: str = IN_CODE
) -> tuple[list[WarmRequest], list[LineError]]:
    """Validate JSON Lines text: the valid requests, and one :class:`LineError` per bad line.

    Pure: reads nothing but ``lines``. Blank lines and ``#`` comments are skipped.
    """
    return _collect(read_jsonl(lines, name=file), file)


def load_prompts(path: str | os.PathLike[str]) -> tuple[list[WarmRequest], list[LineError]]:
    """:func:`parse_prompts` for a file (read as UTF-8 line by line).

    Raises :class:`InputFileError` (a one-line message naming the file) when it is missing,
    a directory, or unreadable.
    """
    file = os.fspath(path)
    return _collect(read_jsonl(path, name=file), file)


def _collect(
    items: Iterable[tuple[int, Any] | LineError], file: str
) -> tuple[list[WarmRequest], list[LineError]]:
    requests: list[WarmRequest] = []
    errors: list[LineError] = []
    for item in items:
        if isinstance(item, LineError):
            errors.append(item)
            continue
        line, value = item
        try:
            requests.append(parse_prompt(value, file=file, line=line))
        except ValueError as exc:
            errors.append(LineError(file, line, str(exc)))
    return requests, errors


PromptSource = Iterable[WarmRequest | Mapping[str, Any]] | str | os.PathLike[str]
"""A prompts file path, or prompts in code (:class:`WarmRequest` values or mappings)."""


def resolve_prompts(prompts: PromptSource) -> tuple[list[WarmRequest], list[LineError]]:
    """The valid requests and the bad lines of a prompts file or of prompts given in code.

    A mapping is checked as a file's line would be (its position is its line number); a
    :class:`WarmRequest` built in code gets the same sendability check a parsed line passed.
    """
    if isinstance(prompts, str | os.PathLike):
        return load_prompts(prompts)
    requests: list[WarmRequest] = []
    errors: list[LineError] = []
    for index, prompt in enumerate(prompts, start=1):
        if isinstance(prompt, WarmRequest):
            try:  # built by hand, perhaps: the same check a parsed line passed
                _check_sendable(prompt.params)
            except ValueError as exc:
                errors.append(LineError(prompt.file, prompt.line, str(exc)))
            else:
                requests.append(prompt)
            continue
        try:
            requests.append(parse_prompt(prompt, line=index))
        except ValueError as exc:
            errors.append(LineError(IN_CODE, index, str(exc)))
    return requests, errors


def strict_error(errors: Sequence[LineError]) -> InputFileError:
    """The one error a strict run raises for ``errors`` (at least one).

    It names the first bad line, how many more there are, and that nothing was sent.
    """
    more = f" (and {len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
    return InputFileError(
        f"{errors[0]}{more}; nothing was sent (strict)", file=errors[0].file, errors=errors
    )
