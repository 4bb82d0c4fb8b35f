"""Time litellm's Responses ↔ chat transformation against the proxy's own (proxy/dialects/responses.py), per
request, side by side in one run, and show what litellm makes of the shapes real clients send.

    python -m bench.responses_bridge [--requests 2000]

The bridged route may add at most one fifth of LiteLLM Proxy's added latency (~10 ms p50 here): ~2 ms.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

from proxy.dialects.responses import chat_body, parse_request, response_from_completion, response_shell
from proxy.model_facts import import_litellm

TOOL = {"type": "function", "name": "get_weather", "description": "The weather.", "strict": False,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# A Codex-like turn: developer text, user text, an earlier call and its output, function tools.
REQUEST: dict[str, Any] = {
    "model": "mock", "stream": False, "tool_choice": "auto", "parallel_tool_calls": True,
    "reasoning": {"summary": "auto"}, "store": False, "instructions": "Be brief.", "max_output_tokens": 200,
    "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}},
    "tools": [TOOL] * 4,
    "input": [{"type": "message", "id": "msg_1", "role": "developer",
               "content": [{"type": "input_text", "text": "You are a coding agent. " * 400}]},
              {"type": "message", "id": "msg_2", "role": "user",
               "content": [{"type": "input_text", "text": "What is the weather?"}]},
              {"type": "function_call", "call_id": "call_1", "name": "get_weather",
               "arguments": '{"city":"x"}'},
              {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "mock-model",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "It is sunny."}}],
              "usage": {"prompt_tokens": 900, "completion_tokens": 5, "total_tokens": 905}}


def ours() -> None:
    request = parse_request(copy.deepcopy(REQUEST))
    chat_body(request, [])
    response_from_completion(response_shell(request, "resp_1"), COMPLETION)


def litellm_bridge(config: Any, model_response: Callable[..., Any]) -> Callable[[], None]:
    def run() -> None:
        body = copy.deepcopy(REQUEST)
        params = {k: v for k, v in body.items() if k not in ("model", "input", "stream")}
        config.transform_responses_api_request_to_chat_completion_request(
            model="openai/mock-model", input=body["input"], responses_api_request=params,
            custom_llm_provider="openai", stream=False)
        config.transform_chat_completion_response_to_responses_api_response(
            request_input=body["input"], responses_api_request=params,
            chat_completion_response=model_response(**copy.deepcopy(COMPLETION)))
    return run


def per_call_ms(work: Callable[[], None], count: int) -> tuple[float, float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    litellm = import_litellm()
    from litellm.responses.litellm_completion_transformation.transformation import (
        LiteLLMCompletionResponsesConfig,
    )

    theirs = litellm_bridge(LiteLLMCompletionResponsesConfig, litellm.ModelResponse)
    for work in (ours, theirs):  # warm up (imports, caches)
        per_call_ms(work, 50)
    ours_p50, ours_p99 = per_call_ms(ours, args.requests)
    theirs_p50, theirs_p99 = per_call_ms(theirs, args.requests)
    print(f"per request (request in, answer out), {args.requests} requests:")
    print(f"  proxy.dialects.responses  p50 {ours_p50:.3f} ms  p99 {ours_p99:.3f} ms")
    print(f"  litellm bridge            p50 {theirs_p50:.3f} ms  p99 {theirs_p99:.3f} ms")
    print(f"  litellm / ours at p50: {theirs_p50 / ours_p50:.1f}x")
    body = copy.deepcopy(REQUEST)
    params = {k: v for k, v in body.items() if k not in ("model", "input", "stream")}
    chat = LiteLLMCompletionResponsesConfig.transform_responses_api_request_to_chat_completion_request(
        model="openai/mock-model", input=body["input"], responses_api_request=params,
        custom_llm_provider="openai", stream=False)
    print("litellm's chat request for the sample (keys, message roles):")
    print("  ", sorted(chat), [message.get("role") for message in chat.get("messages", [])])


if __name__ == "__main__":
    main()
