"""The admin API for keys, in LiteLLM Proxy's paths and field names so that its users' scripts keep working:
POST /key/generate, /key/update, /key/delete; GET /key/info, /key/list. Only the master key may call it.

Keys made here live in the key store (proxy/key_store.py), by hash; the plaintext is returned once, by
generate. Keys from the config file are shown but cannot be changed here. Every change is written to the
audit log (logger `rlm_proxy.audit`) with the key's alias and the start of its hash, never the key.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from proxy.api.deps import Services, ServicesDep, audit, require_master_key
from proxy.api.request import parse_json_body
from proxy.api.streaming import read_body
from proxy.auth import ALIAS_HASH_CHARS
from proxy.config import DURATION_PATTERN, KeyEntry, KeyRLM, duration_seconds, key_hash
from proxy.errors import ProxyError, invalid_request

router = APIRouter(dependencies=[Depends(require_master_key)])

Parsed = TypeVar("Parsed", bound=BaseModel)
HASH = re.compile(r"^[0-9a-fA-F]{64}$")
# LiteLLM's field name -> ours (proxy.config.KeyEntry).
FIELDS = {"key_alias": "alias", "team_id": "team", "models": "models", "max_budget": "max_budget_usd",
          "budget_duration": "budget_duration", "rpm_limit": "rpm", "tpm_limit": "tpm",
          "max_parallel_requests": "max_parallel_requests", "max_parallel_rlm_runs": "max_parallel_rlm_runs",
          "rlm": "rlm", "metadata": "metadata", "expires": "expires"}


class KeyFields(BaseModel):
    """What generate and update may set; a field left out keeps its value (update), null clears it."""

    model_config = ConfigDict(extra="forbid")

    key_alias: str | None = Field(default=None, min_length=1, max_length=64)
    team_id: str | None = Field(default=None, min_length=1, max_length=128)
    models: list[str] | None = None
    max_budget: float | None = Field(default=None, ge=0)
    budget_duration: str | None = Field(default=None, pattern=DURATION_PATTERN)
    rpm_limit: int | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    max_parallel_requests: int | None = Field(default=None, ge=0)
    max_parallel_rlm_runs: int | None = Field(default=None, ge=0)
    rlm: KeyRLM | None = None
    metadata: dict[str, Any] | None = None
    expires: datetime | None = None
    duration: str | None = Field(default=None, pattern=DURATION_PATTERN)  # expires this long from now

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyFields:
        if self.duration is not None and self.expires is not None:
            raise ValueError("give at most one of duration and expires")
        return self

    def changes(self) -> dict[str, Any]:
        """The given fields in KeyEntry's names."""
        given = self.model_fields_set
        changes: dict[str, Any] = {FIELDS[name]: getattr(self, name) for name in FIELDS if name in given}
        if "rlm" in changes and changes["rlm"] is None:
            changes["rlm"] = KeyRLM()
        if "metadata" in changes and changes["metadata"] is None:
            changes["metadata"] = {}
        if self.duration is not None:
            changes["expires"] = datetime.now(UTC) + timedelta(seconds=duration_seconds(self.duration))
        return changes


class GenerateKey(KeyFields):
    key: SecretStr | None = Field(default=None, min_length=8, max_length=256, description="a key of your own")


class UpdateKey(KeyFields):
    key: str = Field(min_length=1, description="the key, or its token (SHA-256)")


class DeleteKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] = []
    key_aliases: list[str] = []

    @model_validator(mode="after")
    def _something(self) -> DeleteKeys:
        if not self.keys and not self.key_aliases:
            raise ValueError("give keys (keys or their tokens) or key_aliases")
        return self


@router.post("/key/generate")
async def generate(request: Request, services: ServicesDep) -> Response:
    asked = _parsed(GenerateKey, await read_body(request))
    plaintext = asked.key.get_secret_value() if asked.key is not None else "sk-" + secrets.token_urlsafe(32)
    if HASH.match(plaintext):
        raise invalid_request("A key must not look like a token (64 hex digits).", param="key")
    digest = key_hash(plaintext)
    if services.keys.configured(bytes.fromhex(digest)) or await services.key_store.get(digest) is not None:
        raise invalid_request("This key exists already.", param="key", code="key_exists")
    entry = _entry({"key_hash": digest, **asked.changes()})
    await services.key_store.put(entry)
    _audit("generate", entry)
    return _json({"key": plaintext, **key_view(entry, "api")})


@router.post("/key/update")
async def update(request: Request, services: ServicesDep) -> Response:
    asked = _parsed(UpdateKey, await read_body(request))
    entry = await _stored(services, asked.key)
    updated = _entry({**entry.model_dump(exclude={"key"}), **asked.changes()})
    await services.key_store.put(updated)
    _audit("update", updated)
    return _json(key_view(updated, "api"))


@router.post("/key/delete")
async def delete(request: Request, services: ServicesDep) -> Response:
    asked = _parsed(DeleteKeys, await read_body(request))
    doomed = [await _stored(services, ref) for ref in asked.keys]
    if asked.key_aliases:
        by_alias = {entry.alias: entry for entry in await services.key_store.all()}
        missing = [alias for alias in asked.key_aliases if alias not in by_alias]
        if missing:
            raise ProxyError(404, f"No key made through the admin API has the alias {missing[0]!r}.",
                             code="key_not_found", param="key_aliases")
        doomed += [by_alias[alias] for alias in asked.key_aliases]
    for entry in doomed:
        await services.key_store.delete(entry.hash)
        _audit("delete", entry)
    return _json({"deleted_keys": sorted({entry.hash for entry in doomed})})


@router.get("/key/info")
async def info(key: str, services: ServicesDep) -> Response:
    digest = _digest(key)
    configured = services.keys.configured(bytes.fromhex(digest))
    if configured is not None and configured.key is not None:
        return _json({"key": digest, "info": key_view(configured.key, "config")})
    entry = await services.key_store.get(digest)
    if entry is None:
        raise _not_found()
    return _json({"key": digest, "info": key_view(entry, "api")})


@router.get("/key/list")
async def list_keys(services: ServicesDep, return_full_object: bool = False, page: int = 1,
                    size: int = 100) -> Response:
    if page < 1 or not 1 <= size <= 1000:
        raise invalid_request("page must be 1 or more and size between 1 and 1000.", param="size")
    views = [key_view(entry, "config") for entry in services.settings.server.keys]
    views += [key_view(entry, "api") for entry in await services.key_store.all()]
    shown = views[(page - 1) * size:page * size]
    return _json({"keys": shown if return_full_object else [view["token"] for view in shown],
                  "total_count": len(views), "current_page": page, "total_pages": -(-len(views) // size)})


def key_view(entry: KeyEntry, source: str) -> dict[str, Any]:
    """A key as the admin API shows it: LiteLLM's names, its token (SHA-256) and never the key."""
    view: dict[str, Any] = {"token": entry.hash}
    view |= {name: getattr(entry, ours) for name, ours in FIELDS.items()}
    view["rlm"] = entry.rlm.model_dump()
    view["expires"] = entry.expires.isoformat() if entry.expires is not None else None
    return {**view, "source": source}


async def _stored(services: Services, ref: str) -> KeyEntry:
    """A key made through the admin API, by the key or its token; config keys are changed in the config."""
    digest = _digest(ref)
    if services.keys.configured(bytes.fromhex(digest)) is not None:
        raise invalid_request("This key is defined in the config file; change it there.", param="key",
                              code="config_key")
    entry = await services.key_store.get(digest)
    if entry is None:
        raise _not_found()
    return entry


def _digest(ref: str) -> str:
    return ref.lower() if HASH.match(ref) else key_hash(ref)


def _parsed(model: type[Parsed], raw: bytes | bytearray) -> Parsed:
    try:
        return model.model_validate(parse_json_body(raw))
    except ValidationError as error:
        raise invalid_request(f"Invalid {model.__name__} payload: {_problems(error)}.") from None


def _entry(fields: dict[str, Any]) -> KeyEntry:
    try:
        return KeyEntry.model_validate(fields)
    except ValidationError as error:
        raise invalid_request(f"Invalid key: {_problems(error)}.") from None


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
                     for problem in error.errors())


def _not_found() -> ProxyError:
    return ProxyError(404, "No such key.", code="key_not_found", param="key")


def _audit(action: str, entry: KeyEntry) -> None:
    audit.info("admin %s by master key: key %s... alias %s team %s", action, entry.hash[:ALIAS_HASH_CHARS],
               entry.alias, entry.team)


def _json(body: dict[str, Any]) -> Response:
    return Response(content=orjson.dumps(body), media_type="application/json")
