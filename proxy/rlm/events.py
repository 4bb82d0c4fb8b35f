"""What a run reports while it works, and its figures at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from proxy.rlm.budget import Limit
    from proxy.rlm.engine import ModelReply


@dataclass
class RunStats:
    iterations: int = 0  # root-model replies in the loop, nested runs included
    subcalls: int = 0  # sub-calls sent (cache hits included)
    cached_subcalls: int = 0
    subcall_errors: int = 0
    blocks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # spent by this run (cache hits cost nothing now)
    cost_saved_usd: float = 0.0  # what the cache hits cost when they were first made
    coverage: float = 0.0  # fraction of the top-level `context` the code read
    max_depth: int = 1
    duration_s: float = 0.0

    def record(self, reply: ModelReply) -> None:
        # Usage counts what the run consumed, cached or not; the saving is reported separately.
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        if reply.cached:
            self.cost_saved_usd += reply.cost_usd

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True)
class _Stamped:
    # Unix time the event was made, as it happened: a reader may see it later (traces place steps by it).
    at: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class IterationStarted(_Stamped):
    iteration: int
    depth: int
    prompt_chars: int = 0  # what the root model is sent this time, the conversation so far


@dataclass(frozen=True)
class ModelCall:
    """One call to a model as the run made it: enough to show it and to find it in the cache again."""

    model: str
    prompt_chars: int
    text: str  # the answer; empty when the call failed
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool
    duration_s: float
    cache_key: str  # "" when the call did not go through the cache
    prompt: str = ""  # sub-calls only: a root call's prompt is the conversation, told by the other events
    started_at: float = 0.0  # Unix time the call began (sub-calls may wait for a slot after their dispatch)


@dataclass(frozen=True)
class RootReplied(_Stamped):
    iteration: int
    depth: int
    call: ModelCall
    final: bool = False  # the answer asked for after a limit stopped the loop


@dataclass(frozen=True)
class BlockStarted(_Stamped):
    iteration: int
    block: int
    depth: int
    code: str


@dataclass(frozen=True)
class BlockExecuted(_Stamped):
    iteration: int
    block: int
    depth: int
    outcome: str  # ok / error / timeout / killed
    duration_s: float
    output_chars: int
    output: str = ""  # as the root model is shown it
    coverage: float = 0.0  # of this depth's `context`, read so far
    cpu_s: float | None = None  # the worker's, None when it died
    peak_rss_bytes: int | None = None
    read_map: tuple[int, ...] = ()  # per hundredth of `context`, the percent read so far


@dataclass(frozen=True)
class SubcallsDispatched(_Stamped):
    count: int
    depth: int


@dataclass(frozen=True)
class SubcallsFinished(_Stamped):
    count: int
    depth: int
    errors: int
    duration_s: float
    calls: tuple[ModelCall, ...] = ()


@dataclass(frozen=True)
class RunFinished(_Stamped):
    answer: str  # may be empty when the run ends in tool calls
    finish_reason: Literal["stop", "length", "tool_calls"]
    stopped: Limit | None  # the limit that ended the run, None when the model answered
    stats: RunStats
    # Calls of the client's tools that the root model answered with, in Chat Completions form:
    # {"id", "type": "function", "function": {"name", "arguments" (a JSON string)}}. Each dialect renders
    # them as its own tool calls; the client runs them and continues the conversation.
    tool_calls: tuple[dict[str, Any], ...] = ()


Event = (IterationStarted | RootReplied | BlockStarted | BlockExecuted | SubcallsDispatched | SubcallsFinished
         | RunFinished)
