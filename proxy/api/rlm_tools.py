"""The client's tools in RLM mode: which of them the root model is offered, or a 400 for those it cannot be.

The root model may answer with calls of the client's function tools; the run then ends with those calls
(README, "RLM mode and the client's tools"). It must stay free to write code first, so a forced tool choice
is refused by `check_rlm_contract`; this module reads what remains of a Chat Completions body.
"""

from __future__ import annotations

from typing import Any

from proxy.api.request import optional, wrong_type
from proxy.errors import invalid_request
from proxy.rlm.engine import ClientTools


def client_tools(body: dict[str, Any]) -> ClientTools | None:
    """The tools to offer the root model, None when there are none or `tool_choice` is "none"."""
    _refuse_legacy_functions(body)
    tools = body.get("tools")
    if tools is None or body.get("tool_choice") == "none":
        return None
    if not isinstance(tools, list):
        raise wrong_type("tools", "an array", tools)
    for index, tool in enumerate(tools):
        _check_function_tool(tool, f"tools[{index}]")
    parallel = optional(body, "parallel_tool_calls", bool, "a boolean")
    return ClientTools(tuple(tools), body.get("tool_choice"), parallel) if tools else None


def _check_function_tool(tool: Any, where: str) -> None:
    if not isinstance(tool, dict):
        raise wrong_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise invalid_request(
            f"RLM mode can offer the root model function tools only; '{where}.type' is "
            f"{tool.get('type')!r}. Remove it, or ask for direct mode (header 'x-rlm-mode: off').",
            param=f"{where}.type", code="unsupported_value")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise wrong_type(f"{where}.function", "an object", function)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}.function.name' must be a non-empty string.",
                              param=f"{where}.function.name", code="invalid_value")


def _refuse_legacy_functions(body: dict[str, Any]) -> None:
    """The deprecated `functions` would need answers in the deprecated `function_call` form: only tools
    are offered to the root model, and functions the client says not to call are harmless."""
    if body.get("functions") and body.get("function_call") != "none":
        raise invalid_request(
            "RLM mode offers the client's tools to the root model only as 'tools'; the deprecated "
            "'functions' are not supported (send them as tools of type 'function', or ask for direct mode "
            "with the header 'x-rlm-mode: off').", param="functions", code="unsupported_parameter")
