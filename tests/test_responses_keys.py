"""Cache keys of Responses API requests (no I/O)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from fallbackchain.cache import cache_key
from fallbackchain.chain import responses_cache_key

BASE: dict[str, Any] = {"input": "Summarise our refund policy.", "instructions": "Be brief."}


def key(**params: Any) -> str | None:
    return responses_cache_key("gpt-test", {**BASE, **params})


def test_the_same_request_has_the_same_key_and_the_chat_key_shape() -> None:
    first = key(temperature=0.2)
    assert first == key(temperature=0.2)
    assert first is not None
    assert first.startswith("fc1-")
    assert len(first) == len("fc1-") + 64


@pytest.mark.parametrize(
    "change",
    [
        {"input": "Something else."},
        {"input": [{"role": "user", "content": "Summarise our refund policy."}]},
        {"instructions": "Be thorough."},
        {"tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]},
        {"tool_choice": "required"},
        {"temperature": 0.7},
        {"top_p": 0.5},
        {"max_output_tokens": 50},
        {"text": {"format": {"type": "json_object"}}},
        {"reasoning": {"effort": "high"}},
        {"include": ["reasoning.encrypted_content"]},
        {"truncation": "auto"},
        {"prompt": {"id": "pmpt_1", "variables": {"x": "y"}}},
        {"parallel_tool_calls": False},
        {"some_new_parameter": 1},  # unknown parameters count as answer-shaping
        {"previous_response_id": "resp_1"},
    ],
)
def test_every_answer_shaping_parameter_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_the_model_changes_the_key() -> None:
    assert responses_cache_key("other-model", BASE) != key()


@pytest.mark.parametrize(
    "transport",
    [
        {"stream": True},
        {"stream_options": {"include_obfuscation": False}},
        {"background": True},
        {"store": True},
        {"store": False},
        {"metadata": {"trace": "1"}},
        {"user": "u-1"},
        {"safety_identifier": "s-1"},
        {"service_tier": "flex"},
        {"prompt_cache_key": "k"},
        {"timeout": 3.0},
        {"extra_headers": {"x-a": "b"}},
        {"temperature": openai.omit},
        {"temperature": openai.NOT_GIVEN},
    ],
)
def test_transport_options_do_not_change_the_key(transport: dict[str, Any]) -> None:
    assert key(**transport) == key()


def test_numbers_count_by_value_as_in_chat_keys() -> None:
    assert key(temperature=1) == key(temperature=1.0)
    assert key(top_logprobs=1) != key(top_logprobs=True)


def test_pydantic_inputs_key_as_their_dicts() -> None:
    from openai.types.responses import EasyInputMessage

    as_model = EasyInputMessage(role="user", content="hi")
    assert responses_cache_key("m", {"input": [as_model]}) == responses_cache_key(
        "m", {"input": [{"role": "user", "content": "hi"}]}
    )


def test_a_previous_response_id_request_is_keyed_by_the_id() -> None:
    one = key(previous_response_id="resp_1")
    assert one is not None
    assert one == key(previous_response_id="resp_1")
    assert one != key(previous_response_id="resp_2")


@pytest.mark.parametrize("conversation", ["conv_1", {"id": "conv_1"}])
def test_a_conversation_request_is_not_cached(conversation: Any) -> None:
    assert key(conversation=conversation) is None


@pytest.mark.parametrize("conversation", [None, openai.omit, openai.NOT_GIVEN])
def test_no_conversation_is_cached_as_usual(conversation: Any) -> None:
    assert key(conversation=conversation) == key()


def test_a_responses_key_never_equals_a_chat_key_of_the_same_words() -> None:
    messages = [{"role": "user", "content": BASE["input"]}]
    chat = cache_key("gpt-test", messages, {"instructions": "Be brief."})
    assert key() != chat
    assert responses_cache_key("gpt-test", {"input": messages}) != cache_key(
        "gpt-test", messages, {}
    )


def test_a_value_with_no_json_form_cannot_be_keyed() -> None:
    with pytest.raises(TypeError):
        key(temperature={1, 2})
