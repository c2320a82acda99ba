"""The drop-in's text chunks are built without validation: they equal validated SDK chunks."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletionChunk

from fallbackchain import ChainEvent
from fallbackchain.chain._dropin_chunks import Chunker


def _validated(chunk: ChatCompletionChunk) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True))


@pytest.mark.parametrize("kind", ["delta", "refusal"])
def test_a_text_chunk_is_the_chunk_validation_would_build(kind: str) -> None:
    chunker = Chunker("gpt-test", usage=False, divergence="raise")
    chunks = chunker.event(ChainEvent(kind, "héllo", "stream"))  # type: ignore[arg-type]
    assert len(chunks) == 2  # the role chunk, then the text
    for chunk in chunks:
        again = _validated(chunk)
        assert type(chunk) is ChatCompletionChunk
        assert chunk == again
        assert chunk.model_fields_set == again.model_fields_set
        assert chunk.choices[0].model_fields_set == again.choices[0].model_fields_set
        assert chunk.choices[0].delta.model_fields_set == again.choices[0].delta.model_fields_set
        assert chunk.model_dump_json() == again.model_dump_json()
        assert chunk.model_dump(exclude_unset=True) == again.model_dump(exclude_unset=True)
        assert repr(chunk) == repr(again)
    text = chunks[1].choices[0].delta
    assert (text.content if kind == "delta" else text.refusal) == "héllo"


def test_chunks_built_without_validation_are_independent() -> None:
    chunker = Chunker("gpt-test", usage=False, divergence="raise")
    first = chunker.event(ChainEvent("delta", "a", "stream"))[-1]
    second = chunker.event(ChainEvent("delta", "b", "stream"))[-1]
    first.choices[0].delta.content = "changed"
    first.model_fields_set.add("system_fingerprint")
    assert second.choices[0].delta.content == "b"
    assert "system_fingerprint" not in second.model_fields_set
