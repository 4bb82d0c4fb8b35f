"""The secrets a record must never show: client keys, the master key, provider credentials in model_list.

Records hold what models and code wrote, and error texts from providers: any of them may echo a credential.
Every encoded record and event passes through `Redactor` before it is stored, written or sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.config import Settings

REDACTED = b"[redacted]"
MIN_SECRET_CHARS = 8  # shorter values (ports, flags) would blank out ordinary text
CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


def known_secrets(settings: Settings) -> tuple[str, ...]:
    server = settings.server
    found = [key.get_secret_value() for key in (server.master_key, *server.api_keys) if key is not None]
    found += [entry.key.get_secret_value() for entry in server.keys if entry.key is not None]
    for entry in settings.model_list:
        found += _credentials(entry.litellm_params)
    return tuple(sorted({value for value in found if len(value) >= MIN_SECRET_CHARS}, key=len, reverse=True))


def _credentials(params: dict[str, Any]) -> list[str]:
    return [value for name, value in params.items()
            if isinstance(value, str) and any(word in name.lower() for word in CREDENTIAL_WORDS)]


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(secret.encode() for secret in secrets)  # longest first: no partial leftovers

    def __call__(self, data: bytes) -> bytes:
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, REDACTED)
        return data
