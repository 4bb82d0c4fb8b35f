"""A Responses API event stream built step by step: the typed SSE events, numbered, in the order the
official SDKs' stream helpers accept (created, in_progress, each output item added / its deltas / done,
then completed, incomplete or failed).

Whatever produces the answer (an upstream chat stream, an RLM run) reports reasoning text, answer text and
tool-call pieces; this class opens and closes the output items around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.dialects.responses import (
    finished,
    function_call_item,
    message_item,
    output_text_part,
    reasoning_item,
)
from proxy.errors import ProxyError


def sse_event(payload: dict[str, Any]) -> bytes:
    """One event with its type as the SSE event name too, as OpenAI sends them."""
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    kind = payload.get("type")
    return b"event: " + kind.encode() + b"\n" + data if isinstance(kind, str) and kind.isprintable() else data


@dataclass
class _Open:
    """The output item being streamed (text and reasoning items are open one at a time)."""

    kind: str  # reasoning / message / function_call
    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class ResponseEvents:
    """The events of one streamed Response; each method returns the SSE bytes to send next."""

    def __init__(self, shell: dict[str, Any]) -> None:
        self._shell = shell
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._open: _Open | None = None
        self._calls: dict[int, _Open] = {}  # function calls by their chat index, open until the end
        self.response: dict[str, Any] | None = None  # the final Response, once completed
        self._finish_reason: str | None = None  # of the chat chunks relayed so far
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(payload)

    def start(self) -> bytes:
        return (self._event("response.created", response=self._shell)
                + self._event("response.in_progress", response=self._shell))

    def reasoning(self, delta: str) -> bytes:
        out = self._switch_to("reasoning")
        assert self._open is not None
        self._open.text.append(delta)
        return out + self._event("response.reasoning_summary_text.delta", item_id=self._open.item["id"],
                                 output_index=self._open.index, summary_index=0, delta=delta)

    def text(self, delta: str) -> bytes:
        out = self._switch_to("message")
        assert self._open is not None
        self._open.text.append(delta)
        return out + self._event("response.output_text.delta", item_id=self._open.item["id"],
                                 output_index=self._open.index, content_index=0, delta=delta, logprobs=[])

    def chat_chunk(self, chunk: dict[str, Any]) -> bytes:
        """A Chat Completions stream chunk's pieces (only the first choice: a Response has one answer)."""
        self._usage = chunk.get("usage") or self._usage
        out = b""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self.reasoning(delta["reasoning_content"])
            if delta.get("content"):
                out += self.text(delta["content"])
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                out += self.tool_call(call.get("index", 0), call.get("id"), function.get("name"),
                                      function.get("arguments") or "")
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
        return out

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """A piece of a chat tool call (the first piece carries its id and name)."""
        out = b""
        call = self._calls.get(index)
        if call is None:
            out += self._close_open()
            item = function_call_item({"id": call_id, "function": {"name": name, "arguments": ""}},
                                      status="in_progress")
            call = self._calls[index] = _Open("function_call", len(self._output), item)
            self._output.append(item)
            out += self._event("response.output_item.added", output_index=call.index, item=item)
        if not arguments:
            return out
        call.text.append(arguments)
        return out + self._event("response.function_call_arguments.delta", item_id=call.item["id"],
                                 output_index=call.index, delta=arguments)

    def finish(self, finish_reason: str | None = None, usage: dict[str, Any] | None = None,
               **extra: Any) -> bytes:
        """Close every item and end with the whole Response (`extra` joins it, e.g. the `rlm` summary);
        the finish reason and usage default to those of the chat chunks relayed."""
        finish_reason, usage = finish_reason or self._finish_reason, usage or self._usage
        out = self._close_open()
        for call in self._calls.values():
            arguments = "".join(call.text)
            call.item.update(arguments=arguments, status="completed")
            out += self._event("response.function_call_arguments.done", item_id=call.item["id"],
                               output_index=call.index, name=call.item["name"], arguments=arguments)
            out += self._event("response.output_item.done", output_index=call.index, item=call.item)
        self.response = {**finished(self._shell, self._output, finish_reason, usage), **extra}
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=self.response)

    def fail(self, error: ProxyError) -> bytes:
        """The stream broke after it started: the Response fails with the error (items stay as they were)."""
        failed = {**self._shell, "status": "failed", "output": self._output,
                  "error": {"code": error.code, "message": error.message}}
        return self._event("response.failed", response=failed)

    def _switch_to(self, kind: str) -> bytes:
        if self._open is not None and self._open.kind == kind:
            return b""
        out = self._close_open()
        index = len(self._output)
        if kind == "reasoning":
            item = reasoning_item("")
            self._open = _Open(kind, index, item)
            self._output.append(item)
            return out + self._event("response.output_item.added", output_index=index, item=item) + \
                self._event("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                            summary_index=0, part={"type": "summary_text", "text": ""})
        item = message_item("", status="in_progress")
        self._open = _Open(kind, index, item)
        self._output.append(item)
        return out + self._event("response.output_item.added", output_index=index, item=item) + \
            self._event("response.content_part.added", item_id=item["id"], output_index=index,
                        content_index=0, part=output_text_part(""))

    def _close_open(self) -> bytes:
        current, self._open = self._open, None
        if current is None:
            return b""
        text, item, index = "".join(current.text), current.item, current.index
        if current.kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            return (self._event("response.reasoning_summary_text.done", item_id=item["id"],
                                output_index=index, summary_index=0, text=text)
                    + self._event("response.reasoning_summary_part.done", item_id=item["id"],
                                  output_index=index, summary_index=0, part=part)
                    + self._event("response.output_item.done", output_index=index, item=item))
        part = output_text_part(text)
        item.update(status="completed", content=[part])
        return (self._event("response.output_text.done", item_id=item["id"], output_index=index,
                            content_index=0, text=text, logprobs=[])
                + self._event("response.content_part.done", item_id=item["id"], output_index=index,
                              content_index=0, part=part)
                + self._event("response.output_item.done", output_index=index, item=item))
