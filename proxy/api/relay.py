"""Re-emitting an upstream's OpenAI-style stream (chat or legacy completion chunks) to the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proxy.api.streaming import DONE, chained, sse_data


async def relay(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]], include_usage: bool,
                chunk_object: str) -> AsyncIterator[bytes]:
    """Re-emit upstream chunks with usage placed exactly as the OpenAI API does.

    The upstream is always asked for usage; providers differ in where they put it (a trailing
    `choices: []` chunk, or the last content chunk), so it is collected and sent once at the end, in a
    chunk of `chunk_object` (`chat.completion.chunk`, or `text_completion` for legacy completions).
    """
    usage: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    pending = [first] if first is not None else []
    async for chunk in chained(pending, chunks):
        if chunk.get("usage"):
            usage = chunk["usage"]
        if not chunk.get("choices") or _carries_nothing(chunk):
            continue  # usage-only (re-sent at the end if asked for), or litellm's empty trailer
        chunk.pop("usage", None)
        if include_usage:
            chunk["usage"] = None
        last = chunk
        yield sse_data(chunk)
    if include_usage and usage is not None:
        template = last or {}
        yield sse_data({"id": template.get("id", ""), "object": chunk_object,
                        "created": template.get("created", 0), "model": template.get("model", ""),
                        "choices": [], "usage": usage})
    yield DONE


def _carries_nothing(chunk: dict[str, Any]) -> bool:
    # A chat choice carries a `delta`, a legacy completion's choice its `text`.
    return all(not choice.get("delta") and not choice.get("text") and not choice.get("finish_reason")
               and not choice.get("logprobs") for choice in chunk["choices"])
