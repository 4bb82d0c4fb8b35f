"""The spend ledger: per key, team and model, with what the cache saved; unit figures, then two proxy
processes sharing one real Redis, driven by the openai SDK, reported by GET /spend/keys and /spend/report."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from proxy.auth import Identity
from proxy.config import CacheSettings, KeyEntry, SpendSettings
from proxy.metering import Metering
from proxy.metrics import OTHER, Metrics
from proxy.mock_policy import needle_prompt
from proxy.spend import SpendLedger
from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Redis, Server, StartProxy, rlm_config, scrape

ALICE, BOB = "sk-alice-spend", "sk-bob-spend"
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
TODAY = datetime.now(UTC).date()


def identity(key: str, alias: str | None, team: str | None) -> Identity:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return Identity(digest, alias or digest[:8], team, key=KeyEntry(key=key, alias=alias, team=team))


def metering(**models: tuple[int, int, float, float]) -> Metering:
    spent = Metering()
    for model, (prompt, completion, cost, saved) in models.items():
        spent.add(model, prompt, completion, cost)
        spent.saved(model, saved)
    return spent


def series(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {(sample.labels["key"], sample.labels["team"]): sample.value for family in metrics.spend.collect()
            for sample in family.samples if sample.name.endswith("_total")}


async def test_spend_adds_up_per_key_team_and_model() -> None:
    metrics = Metrics(["big", "small"])
    ledger = SpendLedger(SpendSettings(), CacheSettings(), metrics)
    alice, bob = identity(ALICE, "alice", "research"), identity(BOB, "bob", "research")
    await ledger.record(alice, metering(big=(100, 10, 0.5, 0.25), small=(20, 2, 0.01, 0.0)))
    await ledger.record(alice, metering(big=(50, 5, 0.25, 0.0)))
    await ledger.record(bob, metering())  # a request that spent nothing still counts
    keys = await ledger.report(TODAY, TODAY, "key")
    assert keys[0] == {"token": alice.key_hash, "key_alias": "alice", "team_id": "research", "requests": 2,
                       "prompt_tokens": 170, "completion_tokens": 17, "spend_usd": pytest.approx(0.76),
                       "saved_usd": pytest.approx(0.25)}
    assert keys[1]["key_alias"] == "bob" and keys[1]["requests"] == 1 and keys[1]["spend_usd"] == 0
    [team] = await ledger.report(TODAY, TODAY, "team")
    assert (team["team"], team["requests"], team["spend_usd"]) == ("research", 3, pytest.approx(0.76))
    models = await ledger.report(TODAY, TODAY, "model")
    assert [(row["model"], row["prompt_tokens"]) for row in models] == [("big", 150), ("small", 20)]
    assert await ledger.report(TODAY - timedelta(days=3), TODAY - timedelta(days=1), "key") == []
    assert series(metrics)[("alice", "research")] == pytest.approx(0.76)


async def test_metric_series_are_bounded_and_never_name_a_hash() -> None:
    metrics = Metrics([])
    ledger = SpendLedger(SpendSettings(metrics_max_labels=2), CacheSettings(), metrics)
    unnamed = identity("sk-no-alias", None, None)
    for who in (identity("sk-1", "one", None), unnamed, identity("sk-3", "three", "t")):
        await ledger.record(who, metering(m=(1, 1, 1.0, 0.0)))
    assert series(metrics) == {("one", "none"): 1.0, ("unnamed", "none"): 1.0, (OTHER, OTHER): 1.0}
    assert unnamed.alias not in str(series(metrics))  # its alias is the start of its hash


# --- through the proxy ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(own_mock_upstream: Mock, start_proxy: StartProxy, redis_server: Redis) -> tuple[Server, Server]:
    keys = [{"key": ALICE, "alias": "alice", "team": "research"}, {"key": BOB, "alias": "bob", "team": "ops"}]
    config = rlm_config(own_mock_upstream, server={"keys": keys}, cache={"redis_url": redis_server.url})
    return start_proxy(config), start_proxy(config)


def ask(proxy: Server, key: str, text: str, **kwargs: Any) -> str:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)
    completion = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": text}],
                                                **kwargs)
    return completion.choices[0].message.content or ""


def report(proxy: Server, path: str, **params: str) -> dict[str, Any]:
    response = httpx.get(proxy.url + path, headers=ADMIN, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_replica_adds_to_one_ledger(replicas: tuple[Server, Server]) -> None:
    first, second = replicas
    assert ask(first, ALICE, "hello").startswith("mock reply")
    prompt = needle_prompt(200_000, "spend-key", "1234567")
    for proxy in replicas:  # the second run is answered from the cache the first one filled
        assert ask(proxy, ALICE, prompt, extra_headers={"x-rlm-mode": "on"}) == "1234567"
    assert ask(second, BOB, "hi").startswith("mock reply")
    keys = {row["key_alias"]: row for row in report(first, "/spend/keys")["keys"]}
    alice, bob = keys["alice"], keys["bob"]
    assert (alice["team_id"], alice["requests"], bob["requests"]) == ("research", 3, 1)
    assert alice["spend_usd"] > bob["spend_usd"] > 0
    assert alice["saved_usd"] > 0  # the cached run's calls
    assert alice["prompt_tokens"] > 200_000 // 4
    teams = {row["team"]: row for row in report(second, "/spend/report", group_by="team")["rows"]}
    assert teams["research"]["spend_usd"] == pytest.approx(alice["spend_usd"])
    [model] = report(second, "/spend/report", group_by="model")["rows"]
    assert model["model"] == "mock"
    assert model["spend_usd"] == pytest.approx(alice["spend_usd"] + bob["spend_usd"])
    # Prometheus: per alias and team, summed over what this replica served; no hash anywhere.
    samples = scrape(first)
    assert samples[("rlm_proxy_spend_usd_total", (("key", "alice"), ("team", "research")))] > 0
    exported = httpx.get(first.url + "/metrics", timeout=10).text
    assert alice["token"] not in exported and alice["token"][:8] not in exported


@pytest.mark.parametrize(("params", "status"), [
    ({"start_date": "yesterday"}, 400), ({"start_date": "2030-01-02", "end_date": "2030-01-01"}, 400),
    ({"group_by": "user"}, 400)])
def test_bad_report_queries_are_400(replicas: tuple[Server, Server], params: dict[str, str],
                                    status: int) -> None:
    response = httpx.get(replicas[0].url + "/spend/report", headers=ADMIN, params=params, timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", [ALICE, EXTRA_KEY, None])
def test_only_the_master_key_reads_spend(replicas: tuple[Server, Server], key: str | None) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(replicas[0].url + "/spend/keys", headers=headers, timeout=10)
    assert response.status_code == 401
