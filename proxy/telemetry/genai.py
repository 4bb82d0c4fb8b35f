"""Model-call attributes after the OpenTelemetry GenAI semantic conventions (gen_ai.*, v1.37 and later:
`gen_ai.provider.name` in place of the deprecated `gen_ai.system`)."""

from __future__ import annotations

from proxy.errors import ProxyError
from proxy.registry import Target

# litellm's provider prefixes whose convention name differs; others are sent as they are.
_PROVIDER_NAMES = {"azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "bedrock": "aws.bedrock",
                   "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini", "mistral": "mistral_ai",
                   "xai": "x_ai", "watsonx": "ibm.watsonx.ai"}


def provider_name(target: Target) -> str | None:
    """The provider of a model group, when all of its deployments share one that is named."""
    providers = {deployment.provider for deployment in target.deployments}
    if len(providers) != 1 or "" in providers:
        return None
    (provider,) = providers
    return _PROVIDER_NAMES.get(provider, provider)


def call_span_name(operation: str, model: str) -> str:
    return f"{operation} {model}"


def call_attributes(operation: str, model: str, provider: str | None, input_tokens: int | None = None,
                    output_tokens: int | None = None) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
    if provider is not None:
        attributes["gen_ai.provider.name"] = provider
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = output_tokens
    return attributes


def error_type(error: Exception) -> str:
    """`error.type`: the proxy's error code, else the exception's class."""
    return error.code if isinstance(error, ProxyError) else type(error).__qualname__
