"""Key checks for the /v1 routes (bearer keys; `x-api-key` on the Messages routes), and who the caller is."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime

from proxy.config import CacheScope, KeyEntry, ServerSettings, TeamEntry, key_hash
from proxy.errors import ProxyError
from proxy.key_store import KeyStore

ALIAS_HASH_CHARS = 8  # a key without an alias is named by the start of its hash


@dataclass(frozen=True)
class Identity:
    """The caller, as far as a key tells: never the key itself, only its hash."""

    key_hash: str  # SHA-256 hex of the key; empty for the anonymous caller (no keys configured)
    alias: str
    team: str | None = None
    # What the key and its team may do; None for the master key, `api_keys` and teams without limits.
    key: KeyEntry | None = field(default=None, compare=False)
    team_limits: TeamEntry | None = field(default=None, compare=False)
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
    """Accepts the master key, `api_keys`, `keys` and the keys made through the admin API (in `store`);
    with none configured everyone is ANONYMOUS (and the admin API, which needs the master key, is off)."""

    def __init__(self, settings: ServerSettings, store: KeyStore) -> None:
        identities = [_identity(key_hash(key.get_secret_value()))
                      for key in settings.api_keys if key.get_secret_value()]
        self._teams = {entry.team: entry for entry in settings.teams}
        identities += [self.identity_of(entry) for entry in settings.keys]
        self._master: bytes | None = None
        if settings.master_key is not None and settings.master_key.get_secret_value():
            master = key_hash(settings.master_key.get_secret_value())
            identities.append(Identity(master, "master", master=True))
            self._master = bytes.fromhex(master)
        self._identities = [(bytes.fromhex(identity.key_hash), identity) for identity in identities]
        self._store = store

    @property
    def enabled(self) -> bool:
        return bool(self._identities)

    async def check(self, authorization: str | None, x_api_key: str | None = None) -> Identity:
        """The caller of a `Authorization: Bearer` key, or of an `x-api-key` (Anthropic's way, accepted
        where the route passes it)."""
        if not self._identities:
            return ANONYMOUS
        candidate = _presented(authorization, x_api_key)
        found = self.configured(candidate)
        if found is None:
            # A lookup by hash: its timing tells nothing about any stored key.
            entry = await self._store.get(candidate.hex())
            if entry is None:
                raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
            found = self.identity_of(entry)
        return unexpired(found)

    def configured(self, digest: bytes) -> Identity | None:
        """The configured key of this SHA-256 digest, compared with every one so that timing does not
        reveal which one nearly matched."""
        found = None
        for known, identity in self._identities:
            if hmac.compare_digest(digest, known):
                found = identity
        return found

    def check_master(self, authorization: str | None) -> None:
        """The admin API's check: the master key, and nothing else."""
        if self._master is None:
            raise ProxyError(403, "The admin API is off: it needs server.master_key.", code="admin_disabled")
        if not hmac.compare_digest(_presented(authorization, None), self._master):
            raise ProxyError(401, "The admin API needs the master key.", code="master_key_required")

    def identity_of(self, entry: KeyEntry) -> Identity:
        team = self._teams.get(entry.team) if entry.team is not None else None
        return Identity(entry.hash, entry.alias or entry.hash[:ALIAS_HASH_CHARS], entry.team, entry, team)


def presented_keys(authorization: str | None, x_api_key: str | None) -> tuple[str, ...]:
    """The keys a request came with, as sent: Anthropic's `x-api-key` (which wins when both are there), then
    the `Authorization: Bearer` token."""
    scheme, _, token = (authorization or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    return tuple(key for key in ((x_api_key or "").strip(), bearer) if key)


def _presented(authorization: str | None, x_api_key: str | None) -> bytes:
    """The SHA-256 digest of the key a request presents."""
    keys = presented_keys(authorization, x_api_key)
    if not keys:
        where = "'Authorization: Bearer <key>'"
        if x_api_key is not None:
            where += " or 'x-api-key: <key>'"
        raise ProxyError(401, f"Missing API key: send {where}.", code="missing_api_key")
    return bytes.fromhex(key_hash(keys[0]))


def unexpired(identity: Identity) -> Identity:
    expires = identity.key.expires if identity.key is not None else None
    if expires is not None and expires <= datetime.now(UTC):
        raise ProxyError(401, f"This API key expired at {expires.isoformat()}.", code="expired_api_key")
    return identity


def _identity(digest: str, alias: str | None = None, team: str | None = None) -> Identity:
    return Identity(digest, alias or digest[:ALIAS_HASH_CHARS], team)
