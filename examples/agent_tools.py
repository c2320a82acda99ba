"""An agent loop with tool calls that stream, surviving mid-stream drops. No key, no network.

Run:  python examples/agent_tools.py

The loop: ask the model; while it streams a tool call, show it; run the tool; send the result
back; stream the final answer. A local ``FaultServer`` plays the model (its responder scripts a
``get_weather`` call, then an answer built from the tool's result) and drops the connection
twice: in the middle of the tool call's arguments, and in the middle of the final answer.

What the chain's events promise (see ``ChainEvent``): after the last ``reset``, the events
rebuild the final message, tool calls included. A tool call is never continued by another
attempt (a retry has its own call id and arguments), so the retry after the first drop starts
with a ``reset``: the loop drops what it had gathered and never runs a call made of two
attempts' fragments. Repeated text is matched instead: the second drop shows no reset and no
text twice.

Then the same agent again, written as plain openai-SDK code (``completions.create(...,
tools=TOOLS, stream=True)``, chunks put together from ``delta.tool_calls``) with the chain's
``chat.completions`` in the client's place, through the same two drops, with the defaults.
An SDK consumer has no ``reset``: the drop-in holds the retry back while it repeats what was
yielded and then yields only the rest, so the loop sees one whole call with the first
attempt's id, and never a call made of two different answers (one would raise
``StreamDivergedError``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import openai

from fallbackchain import CacheConfig, ChainConfig, FallbackChain, OpenAIConfig, RetryConfig
from fallbackchain.testing import Answer, Fault, FaultServer, ToolCall

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """The tool: a stand-in for a real weather service."""
    return {"city": city, "temperature": 7, "unit": unit, "sky": "cloudy"}


def model(messages: Sequence[Mapping[str, Any]], name: str) -> str | Answer:
    """The fault server's responder: call the tool, then answer from its result."""
    last = messages[-1]
    if last.get("role") == "tool":
        report = json.loads(last["content"])
        return (
            f"Right now in {report['city']} it is {report['temperature']} degrees "
            f"{report['unit']} and {report['sky']}: a good day for a coat and a walk."
        )
    return Answer.calling(ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"}))


Turn = tuple[str, list[dict[str, Any]]]  # a model turn's text and tool calls


def ask(chain: FallbackChain, messages: list[dict[str, Any]]) -> Turn:
    """One model turn, streamed: its text and its tool calls, rebuilt from the events."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    with chain.stream(messages, tools=TOOLS) as stream:
        for event in stream:
            if event.type == "reset":  # what was shown is void: start over
                print("\n   [reset: the answer starts over]", flush=True)
                text.clear()
                calls.clear()
            elif event.type == "delta":
                text.append(event.text)
                print(event.text, end="", flush=True)
            elif event.type == "tool_call":
                call = calls.setdefault(event.index, {"arguments": ""})
                if "id" not in call:
                    print(f"   tool call {event.name} ", end="", flush=True)
                call.update(id=event.id, name=event.name)
                call["arguments"] += event.text
                print(event.text, end="", flush=True)
            elif event.type == "refusal":
                print(f"   refused: {event.text}", end="", flush=True)
        response = stream.response
    tries = ", ".join(f"{a.tier}:{a.error or 'ok'}" for a in response.attempts)
    print(f"\n   source={response.source}  attempts=[{tries}]")
    rebuilt = [calls[i] for i in sorted(calls)]
    final = response.completion.choices[0].message.tool_calls or []
    same = [(c["id"], c["name"], c["arguments"]) for c in rebuilt] == [
        (c.id, c.function.name, c.function.arguments) for c in final
    ]
    print(f"   events rebuild the final message: {same and ''.join(text) == response.text}")
    return "".join(text), rebuilt


def ask_as_sdk_code(completions: Any, messages: list[dict[str, Any]]) -> Turn:
    """One model turn as plain openai-SDK code streams it (a client's or a chain's completions)."""
    text = ""
    calls: dict[int, dict[str, Any]] = {}
    stream = completions.create(model="demo-model", messages=messages, tools=TOOLS, stream=True)
    with stream:
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                text += delta.content
                print(delta.content, end="", flush=True)
            for piece in delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": piece.id, "name": "", "arguments": ""})
                if piece.function and piece.function.name:
                    call["name"] += piece.function.name
                    print(f"   tool call {piece.function.name} ", end="", flush=True)
                if piece.function and piece.function.arguments:
                    call["arguments"] += piece.function.arguments
                    print(piece.function.arguments, end="", flush=True)
    print()
    return text, [calls[i] for i in sorted(calls)]


def agent(
    ask_model: Callable[[list[dict[str, Any]]], Turn],
    question: str,
    before_turn: Callable[[int], None] = lambda turn: None,
) -> str:
    """Ask, run every tool the model calls, send the results back, until it answers."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for turn in range(1, 5):
        print(f"\n== turn {turn}")
        before_turn(turn)
        text, calls = ask_model(messages)
        if not calls:
            return text
        messages.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls
                ],
            }
        )
        for call in calls:
            result = get_weather(**json.loads(call["arguments"]))  # only whole calls get here
            print(f"   ran {call['name']} -> {result}")
            messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}
            )
    raise RuntimeError("the model kept calling tools")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with FaultServer(responder=model) as server, tempfile.TemporaryDirectory() as cache_dir:
        config = ChainConfig(
            openai=OpenAIConfig(base_url=server.base_url, model="demo-model"),
            retry=RetryConfig(base_delay=0.05, max_delay=0.2),
            cache=CacheConfig(directory=cache_dir),
        )

        def break_the_stream(turn: int) -> None:
            # Turn 1 drops in the middle of the tool call's arguments (after its header and
            # two fragments); turn 2 in the middle of the final answer's text.
            server.push(Fault.drop(after_chunks=3 if turn == 1 else 6), stream=True)

        client = openai.OpenAI(base_url=server.base_url, api_key="no-key-needed")
        question = "What is the weather in Oslo?"
        with FallbackChain(config, client=client) as chain:
            print("### with the chain's events")
            answer = agent(lambda messages: ask(chain, messages), question, break_the_stream)
            print(f"\nfinal answer: {answer}")
            print(f"upstream requests: {server.counts['total']} (2 dropped, each retried once)")
            server.reset_counts()
            print("\n### as plain openai-SDK code, the chain in the client's place")
            completions = chain.chat.completions  # was: openai.OpenAI().chat.completions
            answer = agent(
                lambda messages: ask_as_sdk_code(completions, messages), question, break_the_stream
            )
            print(f"\nfinal answer: {answer}")
            print(f"upstream requests: {server.counts['total']} (2 dropped, each retried once)")
        client.close()


if __name__ == "__main__":
    main()
