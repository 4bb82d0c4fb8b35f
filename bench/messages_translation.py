"""What translating a Messages request and its answer costs: the proxy's hand-written translation
(proxy/dialects/anthropic.py) against litellm's adapter (the one LiteLLM Proxy's /v1/messages uses), side
by side on the same Claude Code-shaped request, and whether both give the same chat request.

    .venv/bin/python -m bench.messages_translation [--rounds 2000]

The bridged route's budget is one fifth of what LiteLLM Proxy adds on /v1/messages (about 2 ms here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from proxy.dialects.anthropic import message_from_completion, parse_messages_request
from proxy.model_facts import import_litellm

REQUEST: dict[str, Any] = {
    "model": "mock", "max_tokens": 32000, "stream": False, "metadata": {"user_id": "u-1"},
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "Instructions. " * 470}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in main.py?"}]},
                 {"role": "assistant", "content": [
                     {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "main.py"}}]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": "toolu_1", "content": "print('hi')\n" * 40}]}],
    "tools": [{"name": f"tool_{i}", "description": "Does a thing. " * 30,
               "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                                "required": ["path"]}} for i in range(15)],
}
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mock-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "It prints hi forty times."}}],
    "usage": {"prompt_tokens": 3000, "completion_tokens": 8, "total_tokens": 3008}}


def per_call_us(work: Callable[[], object], rounds: int) -> float:
    """Median of per-call times in microseconds."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    raw = orjson.dumps(REQUEST)
    import_litellm()
    from litellm.llms.anthropic.messages.adapters.transformation import LiteLLMAnthropicMessagesAdapter
    from litellm.types.utils import ModelResponse

    adapter = LiteLLMAnthropicMessagesAdapter()
    quiet = contextlib.redirect_stdout(io.StringIO())  # it prints its provider list for an alias like `mock`

    def ours() -> object:
        parse_messages_request(raw)
        return message_from_completion(COMPLETION, "mock")

    def theirs() -> object:
        adapter.translate_anthropic_to_openai(orjson.loads(raw))
        return adapter.translate_openai_response_to_anthropic(ModelResponse(**COMPLETION),
                                                              tool_name_mapping={})

    with quiet:
        ours_us, theirs_us = per_call_us(ours, rounds), per_call_us(theirs, rounds)
        theirs_chat = adapter.translate_anthropic_to_openai(orjson.loads(raw))[0]
    ours_chat = parse_messages_request(raw).chat.body
    print(f"request + answer translation, median of {rounds}:")
    print(f"  hand-written (proxy/dialects/anthropic.py): {ours_us:8.1f} us")
    print(f"  litellm's LiteLLMAnthropicMessagesAdapter:  {theirs_us:8.1f} us   ({theirs_us / ours_us:.1f}x)")
    # Known differences, none of meaning: litellm keeps system text blocks as parts where the proxy joins
    # them, adds `thinking_blocks: None` to assistant messages, and spaces its JSON arguments.
    print(f"  same chat messages: {ours_chat['messages'] == theirs_chat['messages']}; "
          f"same tools: {ours_chat['tools'] == theirs_chat.get('tools')}")


if __name__ == "__main__":
    main()
