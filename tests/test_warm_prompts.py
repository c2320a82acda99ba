"""The prompts to warm: parsing a prompts file or prompts in code into requests and FILE:LINE errors.

Pure: no chain, no server. What a warm run does with the requests is tests/test_warm.py.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.resources.chat.completions import Completions
from openai.resources.responses import Responses

from fallbackchain.cache import InputFileError, LineError
from fallbackchain.warming import (
    ALLOWED_KEYS,
    RESPONSES_KEYS,
    WarmRequest,
    load_prompts,
    parse_prompt,
    parse_prompts,
)

from .conftest import user

# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_shorthand_prompt_becomes_one_user_message():
    request = parse_prompt({"prompt": "Hi there"}, file="p.jsonl", line=3)
    assert request == WarmRequest(3, {"messages": user("Hi there")}, "p.jsonl")
    assert request.model is None
    assert request.where == "p.jsonl:3"


def test_create_arguments_are_kept_as_given():
    value = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, *user("Hi")],
        "temperature": 0,
        "max_tokens": 50,
    }
    request = parse_prompt(value)
    assert dict(request.params) == value
    assert request.model == "gpt-4o"
    assert request.options == {"temperature": 0, "max_tokens": 50}


def test_allowed_keys_are_the_sdk_create_arguments_the_chain_does_not_set():
    sdk = set(inspect.signature(Completions.create).parameters) - {"self"}
    assert (sdk - {"stream", "stream_options", "timeout"}) | {"prompt"} == ALLOWED_KEYS


def test_a_line_with_input_is_a_responses_request():
    value = {"model": "gpt-4o", "input": "Hi", "instructions": "Be brief.", "temperature": 0}
    request = parse_prompt(value, file="p.jsonl", line=2)
    assert request == WarmRequest(2, value, "p.jsonl", api="responses")
    assert request.model == "gpt-4o"
    assert request.options == {"input": "Hi", "instructions": "Be brief.", "temperature": 0}
    assert request.sent("default") == value


def test_api_names_the_api_explicitly():
    followup = parse_prompt({"api": "responses", "previous_response_id": "resp_1", "input": "And?"})
    assert followup.api == "responses"
    assert "api" not in followup.params
    chat = parse_prompt({"api": "chat", "prompt": "Hi"})
    assert chat == WarmRequest(1, {"messages": user("Hi")})
    assert chat.sent("m") == {"model": "m", "messages": user("Hi")}


def test_responses_keys_are_the_sdk_create_arguments_the_chain_does_not_set():
    sdk = set(inspect.signature(Responses.create).parameters) - {"self"}
    assert (sdk - {"stream", "timeout"}) | {"api"} == RESPONSES_KEYS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"api": "completions", "prompt": "a"}', "'api' must be \"chat\" or \"responses\", got \"completions\""),
        (
            '{"input": "a", "messages": []}',
            "unknown key 'messages' (a chat key: a Responses request takes 'input') "
            "for a Responses request",
        ),
        (
            '{"input": "a", "stream": true}',
            "unknown key 'stream' (set by the chain; remove it) for a Responses request",
        ),
        (
            '{"api": "responses", "model": "m"}',
            "a Responses request needs 'input' (a string or a list of input items), 'prompt' or "
            "'previous_response_id'",
        ),
        ('{"input": ""}', "'input' must be a non-empty string or a non-empty array of input items, got a string"),
        ('{"input": {"a": 1}}', "'input' must be a non-empty string or a non-empty array of input items, got an object"),
        ('{"input": "a", "model": 3}', "'model' must be a non-empty string, got a number"),
        (
            '{"input": "a", "conversation": "conv_1"}',
            "a 'conversation' request is never cached (the conversation grows with every turn), "
            "so it cannot be warmed; use 'input' or 'previous_response_id'",
        ),
    ],
)
def test_each_bad_responses_line_is_one_error_naming_file_and_line(line, message):
    requests, errors = parse_prompts(['{"input": "ok"}', line], file="prompts.jsonl")
    assert [(r.line, r.api) for r in requests] == [(1, "responses")]
    assert errors == [LineError("prompts.jsonl", 2, message)]


def test_blank_lines_and_comments_are_skipped_and_line_numbers_kept():
    requests, errors = parse_prompts(
        ["# header", "", '{"prompt": "a"}', "   ", "  # indented comment", '{"prompt": "b"}'],
        file="p.jsonl",
    )
    assert errors == []
    assert [r.line for r in requests] == [3, 6]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a"', "not valid JSON (Expecting ',' delimiter at column 15)"),
        ('{"prompt": "a", "temperature": NaN}', "not valid JSON (NaN is not valid JSON)"),
        ('["a"]', "expected a JSON object, got an array"),
        ('"just text"', "expected a JSON object, got a string"),
        ('{"promt": "a"}', "unknown key 'promt' (did you mean 'prompt'?)"),
        (
            '{"prompt": "a", "temprature": 0, "zzz": 1}',
            "unknown keys 'temprature' (did you mean 'temperature'?), 'zzz'",
        ),
        ('{"prompt": "a", "stream": true}', "unknown key 'stream' (set by the chain; remove it)"),
        (
            '{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}',
            "give either 'prompt' or 'messages', not both",
        ),
        ('{"model": "gpt-4o"}', "needs 'messages' (a list of messages) or 'prompt' (a string)"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string, got a string"),
        ('{"prompt": 5}', "'prompt' must be a non-empty string, got a number"),
        ('{"messages": []}', "'messages' must be a non-empty array of message objects"),
        ('{"messages": "hi"}', "'messages' must be a non-empty array of message objects"),
        ('{"messages": ["hi"]}', "messages[0] must be an object, got a string"),
        ('{"messages": [{"content": "hi"}]}', "messages[0] needs a 'role' string"),
        ('{"prompt": "a", "model": ""}', "'model' must be a non-empty string, got a string"),
        ('{"prompt": "a", "model": null}', "'model' must be a non-empty string, got null"),
    ],
)
def test_each_bad_line_is_one_error_naming_file_and_line(line, message):
    requests, errors = parse_prompts(['{"prompt": "ok"}', line], file="prompts.jsonl")
    assert [r.line for r in requests] == [1]
    assert errors == [LineError("prompts.jsonl", 2, message)]
    assert str(errors[0]) == f"prompts.jsonl:2: {message}"


def test_a_line_that_is_not_utf8_is_an_error_and_the_rest_still_load(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n{"prompt": "c"}\n')
    requests, errors = load_prompts(path)
    assert [r.line for r in requests] == [1, 3]
    assert [str(e) for e in errors] == [f"{path}:2: not UTF-8 text"]


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n')
    requests, errors = load_prompts(path)
    assert (len(requests), errors) == (1, [])


def test_a_missing_prompts_file_is_an_input_file_error_naming_it(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputFileError) as info:
        load_prompts(missing)
    assert str(info.value) == f"{missing}: file not found"


def test_a_directory_is_not_a_prompts_file(tmp_path):
    with pytest.raises(InputFileError, match="is a directory"):
        load_prompts(tmp_path)


# --------------------------------------------------------------------------------------------
# One validation for the dry run and the real run (issue #11, item 8)
# --------------------------------------------------------------------------------------------

SURROGATE = "contains '\\ud800' at position {}, a lone surrogate: not valid Unicode, so the request could not be sent"

UNSENDABLE_LINES = [
    ('{"prompt": "a \\ud800 b"}', "'prompt' " + SURROGATE.format(2)),
    (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
        "'messages[0].content[0].text' " + SURROGATE.format(0),
    ),
    ('{"prompt": "a", "metadata": {"\\ud800": "v"}}', "a key in 'metadata' " + SURROGATE.format(0)),
    (
        '{"prompt": "a", "temperature": 1e999}',
        "'temperature' is out of range (inf): a request can only carry finite numbers",
    ),
    (
        '{"prompt": "a", "logit_bias": {"50256": -1e999}}',
        "'logit_bias[\"50256\"]' is out of range (-inf): a request can only carry finite numbers",
    ),
]


@pytest.mark.parametrize(("line", "message"), UNSENDABLE_LINES)
def test_a_value_no_request_can_carry_is_a_line_error_naming_where(line, message):
    requests, errors = parse_prompts(['{"prompt": "ok"}', line], file="p.jsonl")
    assert [r.line for r in requests] == [1]
    assert errors == [LineError("p.jsonl", 2, message)]


# --------------------------------------------------------------------------------------------
# Property: the prompt parser only ever answers with requests and FILE:LINE errors
# --------------------------------------------------------------------------------------------

# Text with lone surrogates (category Cs, which st.text() leaves out by default).
_odd_text = st.text(
    st.characters() | st.characters(categories=["Cs"]), max_size=12
) | st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "\ufeff", "#", "prompt", "messages", "role", "user", ""]
)
_numbers = st.integers() | st.floats(allow_nan=True, allow_infinity=True)
_scalars = st.none() | st.booleans() | _numbers | _odd_text
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_odd_text | st.sampled_from(sorted(ALLOWED_KEYS)), inner, max_size=4)
    ),
    max_leaves=12,
)
# Nearly valid prompts: the right shape, with odd text and numbers where the values go.
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]) | _odd_text},
        optional={
            "content": _odd_text
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": _odd_text}), max_size=2
            )
        },
    ),
    min_size=1,
    max_size=3,
)
_nearly_valid = st.one_of(
    st.fixed_dictionaries(
        {"prompt": _odd_text},
        optional={
            "temperature": _numbers,
            "metadata": st.dictionaries(_odd_text, _odd_text, max_size=2),
        },
    ),
    st.fixed_dictionaries(
        {"messages": _messages},
        optional={
            "model": _odd_text,
            "logit_bias": st.dictionaries(_odd_text, _numbers, max_size=2),
        },
    ),
)
_as_line = lambda v: json.dumps(v, allow_nan=True)  # noqa: E731 - JSON text as a file holds it
_lines = st.lists(
    _odd_text | _values.map(_as_line) | _nearly_valid.map(_as_line) | st.just('{"prompt": "ok"}'),
    max_size=8,
)


def _assert_sendable(request: WarmRequest) -> None:
    """What the SDK's transport does with a request body: strict JSON, then UTF-8."""
    json.dumps(dict(request.params), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _assert_only_requests_and_line_errors(
    requests: list[WarmRequest], errors: list[LineError], file: str, count: int
) -> None:
    for error in errors:
        assert isinstance(error, LineError)
        assert error.file == file
        assert 1 <= error.line <= count
        assert str(error).startswith(f"{file}:{error.line}: ")
        assert "\n" not in str(error)
    for request in requests:
        assert 1 <= request.line <= count
        # a valid request is one the SDK can send: strict JSON, UTF-8 encodable
        _assert_sendable(request)
    lines = [r.line for r in requests] + [e.line for e in errors]
    assert len(lines) == len(set(lines))  # one verdict per line


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(_lines)
def test_property_parse_prompts_only_answers_with_requests_and_line_errors(lines):
    requests, errors = parse_prompts(lines, file="p.jsonl")
    _assert_only_requests_and_line_errors(requests, errors, "p.jsonl", len(lines))


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.binary(max_size=40)
        | _lines.map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
        max_size=6,
    )
)
def test_property_load_prompts_on_arbitrary_bytes_only_gives_line_errors(chunks):
    data = b"\n".join(chunks)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "p.jsonl"
        path.write_bytes(data)
        requests, errors = load_prompts(path)
    _assert_only_requests_and_line_errors(requests, errors, str(path), data.count(b"\n") + 1)


@pytest.mark.slow  # 150 examples: over 0.3 s
@settings(max_examples=150, deadline=None)
@given(_values | _nearly_valid)
def test_property_parse_prompt_gives_a_sendable_request_or_a_one_line_value_error(value):
    try:
        request = parse_prompt(value, file="p.jsonl", line=1)
    except ValueError as exc:
        message = str(exc)
    else:
        _assert_sendable(request)
        return
    assert message
    assert "\n" not in message
