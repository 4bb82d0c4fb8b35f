"""Key checks for the /v1 routes (bearer keys; `x-api-key` on the Messages routes), and who the caller is."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from proxy.config import CacheScope, ServerSettings, key_hash
from proxy.errors import ProxyError

ALIAS_HASH_CHARS = 8  # a key without an alias is named by the start of its hash


@dataclass(frozen=True)
class Identity:
    """The caller, as far as a key tells: never the key itself, only its hash."""

    key_hash: str  # SHA-256 hex of the key; empty for the anonymous caller (no keys configured)
    alias: str
    team: str | None = None
    master: bool = False  # the master key: sees every key's runs

    def cache_scope(self, scope: CacheScope) -> str:
        """Whose cached calls this caller may reuse. A key without a team is a team of its own."""
        if scope == "global":
            return ""
        if scope == "team" and self.team is not None:
            return f"team:{self.team}"
        return f"key:{self.key_hash}"


ANONYMOUS = Identity(key_hash="", alias="anonymous")


class KeyChecker:
    """Accepts the master key, `api_keys` and `keys`; with none configured everyone is ANONYMOUS."""

    def __init__(self, settings: ServerSettings) -> None:
        identities = [_identity(key_hash(key.get_secret_value()))
                      for key in settings.api_keys if key.get_secret_value()]
        identities += [_identity(entry.hash, entry.alias, entry.team) for entry in settings.keys]
        if settings.master_key is not None and settings.master_key.get_secret_value():
            master = key_hash(settings.master_key.get_secret_value())
            identities.append(Identity(master, "master", master=True))
        self._identities = [(bytes.fromhex(identity.key_hash), identity) for identity in identities]

    @property
    def enabled(self) -> bool:
        return bool(self._identities)

    def check(self, authorization: str | None, x_api_key: str | None = None) -> Identity:
        """The caller of a `Authorization: Bearer` key, or of an `x-api-key` (Anthropic's way, accepted
        where the route passes it)."""
        if not self._identities:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if x_api_key and x_api_key.strip():
            scheme, token = "bearer", x_api_key
        if scheme.lower() != "bearer" or not token.strip():
            where = "'Authorization: Bearer <key>'"
            if x_api_key is not None:
                where += " or 'x-api-key: <key>'"
            raise ProxyError(401, f"Missing API key: send {where}.", code="missing_api_key")
        candidate = bytes.fromhex(key_hash(token.strip()))
        # Compare against every key so that timing does not reveal which one nearly matched.
        found = ANONYMOUS
        for digest, identity in self._identities:
            if hmac.compare_digest(candidate, digest):
                found = identity
        if found is ANONYMOUS:
            raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
        return found


def _identity(digest: str, alias: str | None = None, team: str | None = None) -> Identity:
    return Identity(digest, alias or digest[:ALIAS_HASH_CHARS], team)
