"""Every foreign error maps into the fallbackchain tree; client errors pass through unchanged."""

from __future__ import annotations

import inspect
import json
import sqlite3

import httpx2
import openai
import pytest

import fallbackchain
from fallbackchain import (
    FallbackChainError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    MalformedChunkError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    StreamEventError,
    TierError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from fallbackchain._errors import is_client_error, map_error

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(status: int, *, headers=None, code=None):
    body = {"message": "x", "type": "t", "param": None, "code": code}
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST, json={"error": body})
    client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1/v1")
    return client._make_status_error_from_response(response)


FOREIGN = [
    (status_error(408), UpstreamStatusError),
    (status_error(409), UpstreamStatusError),
    (status_error(429), RateLimitedError),
    (status_error(429, code="insufficient_quota"), QuotaExceededError),
    (status_error(500), ServerError),
    (status_error(503, headers={"retry-after": "3"}), ServerError),
    (openai.APIConnectionError(request=REQUEST), UpstreamConnectionError),
    (openai.APITimeoutError(request=REQUEST), FirstTokenTimeoutError),
    (openai.APIError("boom", REQUEST, body={"code": "server_error"}), StreamEventError),
    (openai.APIResponseValidationError(httpx2.Response(200, request=REQUEST), None), MalformedChunkError),
    (json.JSONDecodeError("Expecting value", "{x", 1), MalformedChunkError),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), MalformedChunkError),
    (httpx2.ReadTimeout("slow", request=REQUEST), FirstTokenTimeoutError),
    (httpx2.ConnectError("refused", request=REQUEST), UpstreamConnectionError),
    (httpx2.RemoteProtocolError("eof", request=REQUEST), UpstreamConnectionError),
    (ConnectionResetError(104, "reset"), UpstreamConnectionError),
    (TimeoutError(), FirstTokenTimeoutError),
    (sqlite3.OperationalError("locked"), TierError),
    (RuntimeError("anything else"), TierError),
]


@pytest.mark.parametrize(("exc", "expected"), FOREIGN, ids=lambda v: type(v).__name__)
def test_foreign_errors_map_to_the_most_specific_class_chained_from_the_original(exc, expected):
    mapped = map_error(exc)
    assert type(mapped) is expected
    assert mapped.__cause__ is exc
    assert isinstance(mapped, FallbackChainError)


def test_a_timeout_after_content_is_an_idle_timeout():
    assert isinstance(map_error(openai.APITimeoutError(request=REQUEST), content_seen=True), IdleTimeoutError)


def test_retry_after_and_should_retry_are_read_from_the_response():
    mapped = map_error(status_error(429, headers={"retry-after-ms": "1500", "x-should-retry": "false"}))
    assert mapped.retry_after == 1.5
    assert mapped.retryable is False


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_mapped(status):
    exc = status_error(status)
    assert is_client_error(exc)
    assert map_error(exc) is None


@pytest.mark.slow  # loads every lazy module of the SDK (~1,600 modules)
def test_every_openai_exception_class_is_covered():
    """A new exception class in the SDK fails this test until it is mapped on purpose."""
    covered = {type(e) for e, _ in FOREIGN} | {
        openai.BadRequestError, openai.AuthenticationError, openai.PermissionDeniedError,
        openai.NotFoundError, openai.UnprocessableEntityError, openai.ConflictError,
        openai.RateLimitError, openai.InternalServerError, openai.APIStatusError,
    }
    not_from_requests = {  # raised by helpers the chain never calls
        "LengthFinishReasonError", "ContentFilterFinishReasonError", "InvalidWebhookSignatureError",
        "SubjectTokenProviderError", "WebSocketConnectionClosedError", "WebSocketQueueFullError",
        "OAuthError", "OpenAIError", "_AmbiguousModuleClientUsageError",
    }
    classes = {
        obj for name, obj in list(vars(openai).items())
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("openai")
        and name not in not_from_requests
    }
    missing = {c.__name__ for c in classes} - {c.__name__ for c in covered}
    assert not missing, f"unmapped openai exceptions: {sorted(missing)}"
    for cls in [openai.OpenAIError, openai.LengthFinishReasonError]:  # still never leak raw
        assert isinstance(map_error(cls.__new__(cls)), TierError)


def test_every_httpx2_exception_class_maps_to_a_tier_error():
    for cls in [c for c in vars(httpx2).values() if inspect.isclass(c) and issubclass(c, httpx2.HTTPError)]:
        if cls is httpx2.HTTPStatusError:
            exc = cls("x", request=REQUEST, response=httpx2.Response(500, request=REQUEST))
        else:
            try:
                exc = cls("x", request=REQUEST)
            except TypeError:
                exc = cls("x")
        assert isinstance(map_error(exc), TierError), cls


def _public_errors() -> list[str]:
    exported = [getattr(fallbackchain, name) for name in fallbackchain.__all__]
    errors = [v.__name__ for v in exported if isinstance(v, type) and issubclass(v, BaseException)]
    assert len(errors) > 20
    return errors


def test_the_tree_in_the_docstring_lists_every_public_error():
    doc = fallbackchain._errors.__doc__
    assert doc is not None
    for name in _public_errors():  # wherever it is defined
        assert name in doc, name


def test_all_public_errors_derive_from_the_root():
    for name in _public_errors():
        assert issubclass(getattr(fallbackchain, name), FallbackChainError), name


def test_timeouts_are_connection_errors():
    assert issubclass(FirstTokenTimeoutError, UpstreamTimeoutError)
    assert issubclass(UpstreamTimeoutError, UpstreamConnectionError)


def _round_trip(error: BaseException) -> BaseException:
    import pickle

    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error) and again.args == error.args
    return again


def test_errors_cross_process_boundaries_intact(tmp_path):
    """Every error pickles (multiprocessing, concurrent.futures): the subclasses' __init__
    take other arguments than ``args``, which broke unpickling before."""
    from fallbackchain import AllTiersFailedError, Attempt, ConfigError, load_config

    limited = map_error(status_error(429, headers={"retry-after": "7"}))
    assert isinstance(limited, RateLimitedError)
    again = _round_trip(limited)
    assert (again.status_code, again.retry_after, again.retryable) == (429, 7.0, True)

    failed = AllTiersFailedError(
        [Attempt("primary", "rate limited", 0.1, exception=limited, status_code=429)]
    )
    again = _round_trip(failed)
    assert again.attempts[0].tier == "primary" and again.attempts[0].status_code == 429
    assert isinstance(again.attempts[0].exception, RateLimitedError)

    bad = tmp_path / "bad.toml"
    bad.write_text("[retry]\nmax_attempts = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    again = _round_trip(info.value)
    assert (again.file, again.key, again.line) == (info.value.file, info.value.key, 2)
    assert again.errors == [again]
