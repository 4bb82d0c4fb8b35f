"""Bearer-key checks for the /v1 routes."""

from __future__ import annotations

import hmac

from proxy.errors import ProxyError


class KeyChecker:
    """Accepts the master key and the extra API keys; with none configured every request passes."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProxyError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                             code="missing_api_key")
        candidate = token.strip().encode()
        # Compare against every key so that timing does not reveal which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
