"""The rest of the SDK's surface on the drop-in: its errors, ``n``, the raw-response wrappers.

Real openai clients over loopback against the fault server; every test runs sync and async.
Where the SDK's behaviour is the reference, the same code runs against a plain client first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from fallbackchain import AllTiersFailedError, FallbackChainError, trace_of
from fallbackchain.testing import Fault, FaultServer

from .conftest import user

MODEL = "test-model"


def call(h: Any, completions: Any, **kwargs: Any) -> Any:
    """``completions.create(**kwargs)`` in the harness's mode; a stream is read to its end."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", user("hello"))
    if h.mode == "sync":
        answer = completions.create(**kwargs)
        return list(answer) if kwargs.get("stream") else answer

    async def go() -> Any:
        answer = await completions.create(**kwargs)
        return [c async for c in answer] if kwargs.get("stream") else answer

    return h.loop.run_until_complete(go())


@pytest.fixture
def plain(harness: Any, server: FaultServer) -> Iterator[Any]:
    """``chat.completions`` of a plain openai client (the harness's mode, no retries)."""
    kind: Any = openai.OpenAI if harness.mode == "sync" else openai.AsyncOpenAI
    client = kind(base_url=server.base_url, api_key="sk-plain", max_retries=0)
    yield client.chat.completions
    closing = client.close()  # a coroutine for the async client
    if harness.mode == "async":
        harness.loop.run_until_complete(closing)


# -- errors: what code written against the SDK catches ------------------------------------------


def sdk_handler(h: Any, completions: Any, **kwargs: Any) -> tuple[str, int | None]:
    """Plain SDK error handling: which class caught it, and the status it carried."""
    try:
        call(h, completions, **kwargs)
    except openai.RateLimitError as exc:
        return "rate limited", exc.status_code
    except openai.InternalServerError as exc:
        return "server error", exc.status_code
    except openai.APITimeoutError:
        return "timed out", None
    except openai.APIConnectionError:
        return "no connection", None
    except openai.APIError:
        return "api error", None
    return "answered", None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("fault", "caught"),
    [
        (Fault.status(429), ("rate limited", 429)),
        (Fault.status(503), ("server error", 503)),
        (Fault.reset(), ("no connection", None)),
    ],
)
def test_sdk_error_handling_catches_the_chains_error_as_it_catches_the_sdks(
    harness, server, plain, fault, caught, stream
):
    server.default = fault
    assert sdk_handler(harness, plain, stream=stream) == caught
    assert sdk_handler(harness, harness.chain.chat.completions, stream=stream) == caught


def raised(h: Any, **kwargs: Any) -> BaseException:
    with pytest.raises(AllTiersFailedError) as info:
        call(h, h.chain.chat.completions, **kwargs)
    return info.value


def test_the_error_is_the_chains_with_the_last_provider_answer_as_the_sdks(harness, server):
    server.default = Fault.status(429)
    error: Any = raised(harness)
    assert isinstance(error, openai.RateLimitError) and isinstance(error, FallbackChainError)
    assert type(error).__name__ == "AllTiersFailedError"
    assert error.status_code == 429 and error.response.status_code == 429
    assert [a.status_code for a in error.attempts] == [429, 429, 429]
    assert str(error).startswith("all tiers failed after 3 attempt(s)")
    assert isinstance(error.__cause__, AllTiersFailedError)  # the chain's own, unchanged
    assert not isinstance(error.__cause__, openai.APIError)
    assert "/chat/completions" in str(error.request.url)


def test_the_sdk_flavoured_error_crosses_process_boundaries(harness, server):
    """A worker's error reaches the parent (multiprocessing, concurrent.futures) as the same
    SDK class: the class is made at run time, so pickle must be able to make it again."""
    import pickle

    server.default = Fault.status(429)
    error: Any = raised(harness)
    again: Any = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert isinstance(again, openai.RateLimitError) and isinstance(again, AllTiersFailedError)
    assert again.status_code == 429 and [a.status_code for a in again.attempts] == [429] * 3


def test_no_attempt_reached_a_provider_is_a_connection_error(harness, server):
    server.default = Fault.status(503)
    for _ in range(10):
        if set(harness.chain.breaker_states().values()) == {"open"}:
            break
        raised(harness, messages=user("open the breakers"))
    assert set(harness.chain.breaker_states().values()) == {"open"}
    total = server.counts["total"]
    error: Any = raised(harness, messages=user("while open"))
    assert server.counts["total"] == total  # nothing was sent
    assert isinstance(error, openai.APIConnectionError)
    assert not isinstance(error, openai.APIStatusError)
    assert "127.0.0.1" in str(error.request.url)


def test_an_error_mid_stream_is_the_sdks_too(harness, server):
    server.default = Fault.drop(after_chunks=3)  # every try breaks after some text
    completions = harness.chain.chat.completions
    chunks: list[Any] = []

    def read() -> None:
        if harness.mode == "sync":
            with completions.create(messages=user("hello"), stream=True) as stream:
                for chunk in stream:
                    chunks.append(chunk)
            return

        async def go() -> None:
            async with await completions.create(messages=user("hello"), stream=True) as s:
                async for chunk in s:
                    chunks.append(chunk)

        harness.loop.run_until_complete(go())

    with pytest.raises(openai.APIConnectionError) as info:
        read()
    assert chunks  # it broke after text was yielded
    assert isinstance(info.value, AllTiersFailedError)


@pytest.mark.slow  # real time: a silent server against a 0.3-s first-token timeout
def test_a_timeout_is_the_sdks_timeout_error(harness_factory, server):
    h = harness_factory(real_time=True, openai__first_token_timeout=0.3, openai__timeout=0.3)
    server.default = Fault.slow_first_byte(2.0)
    error: Any = raised(h)
    assert isinstance(error, openai.APITimeoutError)


def test_parse_raises_the_sdks_error_too(harness, server):
    server.default = Fault.status(429)
    completions = harness.chain.chat.completions

    def parse() -> Any:
        if harness.mode == "sync":
            return completions.parse(model=MODEL, messages=user("x"))
        return harness.loop.run_until_complete(completions.parse(model=MODEL, messages=user("x")))

    with pytest.raises(openai.RateLimitError):
        parse()


def test_errors_the_sdk_raises_itself_are_left_alone(harness, server):
    server.default = Fault.status(400)  # the caller's own mistake, as the provider says
    with pytest.raises(openai.BadRequestError) as info:
        call(harness, harness.chain.chat.completions)
    assert not isinstance(info.value, FallbackChainError)


def test_the_plain_chain_api_raises_the_chains_error_unchanged(harness, server):
    server.default = Fault.status(429)
    chain = harness.chain

    def complete() -> Any:
        if harness.mode == "sync":
            return chain.complete(user("x"))
        return harness.loop.run_until_complete(chain.complete(user("x")))

    with pytest.raises(AllTiersFailedError) as info:
        complete()
    assert not isinstance(info.value, openai.APIError)


# -- n: several choices ------------------------------------------------------------------------


def test_several_choices_are_asked_of_the_provider_for_a_whole_completion(harness, server):
    completion = call(harness, harness.chain.chat.completions, messages=user("x"), n=2)
    assert isinstance(completion, ChatCompletion)
    assert all(r.body["n"] == 2 for r in server.requests)  # every attempt asked for them
    assert harness.chain.cache_key(user("x"), n=2) != harness.chain.cache_key(user("x"))
    server.default = Fault.status(503)  # a cached answer is only that request's
    cached = call(harness, harness.chain.chat.completions, messages=user("x"), n=2)
    assert trace_of(cached).source == "cache" and cached.choices == completion.choices


def test_several_choices_in_a_stream_are_refused_naming_the_option(harness, server):
    with pytest.raises(ValueError, match=r"n=3.*one choice.*without stream=True"):
        call(harness, harness.chain.chat.completions, stream=True, n=3)
    assert server.counts["total"] == 0
    assert call(harness, harness.chain.chat.completions, stream=True, n=1)  # one is fine


# -- with_raw_response, with_streaming_response, stream.response ---------------------------------


def raw(h: Any, completions: Any, method: str = "create", **kwargs: Any) -> Any:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", user("hello"))
    wrapper = getattr(completions.with_raw_response, method)
    if h.mode == "sync":
        return wrapper(**kwargs)
    return h.loop.run_until_complete(wrapper(**kwargs))


def test_with_raw_response_parses_as_the_sdks_does(harness, server, plain):
    expected = raw(harness, plain).parse()
    response = raw(harness, harness.chain.chat.completions)
    completion = response.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == expected.choices[0].message.content
    assert trace_of(completion).source == "stream"
    parsed = raw(harness, harness.chain.chat.completions, "parse").parse()
    assert parsed.choices[0].message.content == expected.choices[0].message.content


def test_with_raw_response_of_a_stream_gives_the_drop_in_stream(harness, server):
    stream = raw(harness, harness.chain.chat.completions, stream=True).parse()
    if harness.mode == "sync":
        with stream:
            chunks = list(stream)
    else:

        async def go() -> list[Any]:
            async with stream:
                return [c async for c in stream]

        chunks = harness.loop.run_until_complete(go())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        harness.answer("hello")
    )


@pytest.mark.parametrize("part", ["headers", "status_code", "http_response", "text"])
def test_the_http_parts_of_a_raw_response_are_refused_not_invented(harness, server, part):
    response = raw(harness, harness.chain.chat.completions)
    with pytest.raises(NotImplementedError, match=r"no single HTTP response.*trace_of"):
        getattr(response, part)
    with pytest.raises(AttributeError):
        response.no_such_attribute  # noqa: B018


def test_with_streaming_response_and_a_streams_response_are_refused(harness, server):
    completions = harness.chain.chat.completions
    with pytest.raises(NotImplementedError, match="with_streaming_response"):
        completions.with_streaming_response  # noqa: B018
    assert server.counts["total"] == 0
    if harness.mode == "sync":
        stream = completions.create(messages=user("x"), stream=True)
        with pytest.raises(NotImplementedError, match="trace_of"):
            stream.response  # noqa: B018
        stream.close()
        return

    async def go() -> None:
        stream = await completions.create(messages=user("x"), stream=True)
        with pytest.raises(NotImplementedError, match="trace_of"):
            stream.response  # noqa: B018
        await stream.close()

    harness.loop.run_until_complete(go())
