"""The drop-in's errors as the openai SDK's: ``except openai.APIError`` keeps working.

Code written against the SDK catches ``openai.APIError`` (or ``RateLimitError``,
``APIConnectionError``, ...). When the chain has no answer at all it raises
:class:`~fallbackchain.AllTiersFailedError`; from the drop-in surface that error is *also* an
instance of the SDK's class matching the last attempt that reached a provider:

* an HTTP status: that status's SDK class (``RateLimitError`` for 429,
  ``InternalServerError`` for 5xx, ...), with the provider's ``status_code``, ``response``,
  ``body``, ``code`` and ``request_id``;
* a timeout: ``APITimeoutError``; any other fault, or no attempt that reached a provider
  (breakers open, deadline spent): ``APIConnectionError``.

Its message, ``attempts`` and class name stay the chain's; the original error is its
``__cause__``. Other errors are left as they are: a caller's own mistake the provider refused
(a 400 from the primary) already is the SDK's error, and
:class:`~fallbackchain.StreamDivergedError` has no SDK counterpart.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final

import httpx2
import openai

from .._errors import (
    AllTiersFailedError,
    Attempt,
    BreakerOpenError,
    DeadlineExceededError,
    RouteRejectedError,
    UpstreamTimeoutError,
)
from .._redact import mask_url

__all__ = ["SdkErrors", "as_sdk_error"]

# Attempts that say nothing about the provider: no request was made, or a fallback refused a
# request the primary takes (its 4xx would tell an SDK caller "your request is bad").
_SILENT: Final = (BreakerOpenError, DeadlineExceededError, RouteRejectedError)


_FLAVOURED: dict[type[openai.APIError], type[Any]] = {}


def _flavoured_class(sdk_class: type[openai.APIError]) -> type[Any]:
    """``AllTiersFailedError`` that is also a ``sdk_class`` (made once per SDK class)."""
    made = _FLAVOURED.get(sdk_class)
    if made is None:
        namespace = {
            "__module__": AllTiersFailedError.__module__,
            "__doc__": AllTiersFailedError.__doc__,
            # The class is made here, so pickle cannot find it by name: rebuild it from the
            # SDK class (another process, or this one after a restart, makes the same one).
            "__reduce__": lambda self: (_rebuild, (sdk_class, self.args), self.__dict__),
        }
        made = _FLAVOURED[sdk_class] = type(
            AllTiersFailedError.__name__, (AllTiersFailedError, sdk_class), namespace
        )
    return made


def _rebuild(sdk_class: type[openai.APIError], args: tuple[Any, ...]) -> Any:
    error = BaseException.__new__(_flavoured_class(sdk_class))
    error.args = args
    return error


def _flavoured(sdk_class: type[openai.APIError]) -> Any:
    """A new ``AllTiersFailedError`` that is also an instance of ``sdk_class`` (not initialised)."""
    return BaseException.__new__(_flavoured_class(sdk_class))


def _telling(attempts: tuple[Attempt, ...]) -> Attempt | None:
    """The last attempt whose error came from a provider (or the network to it)."""
    for attempt in reversed(attempts):
        if attempt.exception is not None and not isinstance(attempt.exception, _SILENT):
            return attempt
    return None


def as_sdk_error(
    error: AllTiersFailedError, base_url: str, path: str = "chat/completions"
) -> AllTiersFailedError:
    """``error`` as an instance of the SDK's matching class too (see the module docstring).

    ``base_url`` (masked) and ``path`` make the SDK's ``request`` when no attempt had one.
    """
    attempt = _telling(error.attempts)
    cause = attempt.exception.__cause__ if attempt is not None and attempt.exception else None
    if isinstance(cause, openai.APIError):
        request = cause.request
    else:
        request = httpx2.Request("POST", f"{mask_url(base_url).rstrip('/')}/{path}")
    message = str(error)
    if isinstance(cause, openai.APIStatusError):
        sdk = _flavoured(type(cause))
        openai.APIStatusError.__init__(sdk, message, response=cause.response, body=cause.body)
    elif attempt is not None and isinstance(attempt.exception, UpstreamTimeoutError):
        sdk = _flavoured(openai.APITimeoutError)
        openai.APIError.__init__(sdk, message, request, body=None)
    else:
        sdk = _flavoured(openai.APIConnectionError)
        openai.APIError.__init__(sdk, message, request, body=None)
    sdk.args = error.args
    sdk.attempts = error.attempts
    return sdk  # type: ignore[no-any-return]


class SdkErrors:
    """``with SdkErrors(base_url):`` re-raises an ``AllTiersFailedError`` as the SDK's too.

    A plain object (not a generator context manager): it wraps every pull of a stream.
    """

    __slots__ = ("_base_url", "_path")

    def __init__(self, base_url: str, path: str = "chat/completions") -> None:
        self._base_url = base_url
        self._path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, AllTiersFailedError) and not isinstance(error, openai.APIError):
            raise as_sdk_error(error, self._base_url, self._path) from error
