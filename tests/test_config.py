"""Settings: YAML plus environment overrides, secret references, and clear errors for bad configs."""

from __future__ import annotations

import hashlib
import pwd
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from proxy.app import _pool_limits
from proxy.config import ConfigError, Settings, duration_seconds, load_settings, worker_ids
from sandbox import WorkerUser

SK_A_HASH = hashlib.sha256(b"sk-a").hexdigest()


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_no_config_gives_embedded_defaults() -> None:
    settings = load_settings()
    assert settings.model_list == []
    assert settings.server.master_key is None
    assert settings.upstream.max_retries == 2


def test_yaml_model_list_and_env_reference(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"model_list": [{"model_name": "gpt", "litellm_params": {
        "model": "openai/gpt-4o", "api_key": "os.environ/MY_KEY"},
        "model_info": {"max_input_tokens": 1000}}]})
    monkeypatch.setenv("MY_KEY", "sk-secret")
    settings = load_settings(path)
    entry = settings.model_list[0]
    assert entry.litellm_params["api_key"] == "sk-secret"
    assert entry.model_info.max_input_tokens == 1000


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"server": {"master_key": "from-yaml", "max_body_bytes": 10}})
    monkeypatch.setenv("RLM_PROXY_SERVER__MASTER_KEY", "from-env")
    settings = load_settings(path)
    assert settings.server.master_key is not None
    assert settings.server.master_key.get_secret_value() == "from-env"
    assert settings.server.max_body_bytes == 10  # untouched fields of the section survive the merge


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"upstream": {"max_retries": 5}})
    monkeypatch.setenv("RLM_PROXY_CONFIG", str(path))
    assert load_settings().upstream.max_retries == 5


def test_litellm_proxy_config_loads_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x", "rpm": 10},
                        "model_info": {"id": "abc", "mode": "chat"}}],
        "litellm_settings": {"num_retries": 4, "request_timeout": 30},
        "router_settings": {"routing_strategy": "least-busy", "allowed_fails": 1, "cooldown_time": 30},
        "general_settings": {"master_key": "sk-1"}})
    settings = load_settings(path)
    assert settings.model_list[0].model_name == "m"
    # LiteLLM's names for settings of ours are read as those settings.
    assert (settings.upstream.max_retries, settings.upstream.timeout_s) == (4, 30)
    assert settings.server.master_key is not None and settings.server.master_key.get_secret_value() == "sk-1"


@pytest.mark.parametrize(("data", "environ", "names"), [
    ({"server": {"max_body_bytes": "lots"}}, {}, "server.max_body_bytes"),
    ({"server": {"max_body_byte": 10}}, {}, "server.max_body_byte"),
    ({"model_list": [{"model_name": "m", "litellm_params": {}}]}, {}, "model_list.0.litellm_params"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "x", "api_key": "os.environ/NOPE"}}]},
     {}, "model_list.0.litellm_params.api_key"),
    ({"upstream": {"max_retries": 1}}, {"RLM_PROXY_UPSTREAM__MAX_RETRIES": "-3"}, "upstream.max_retries"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "x"}}], "rlm": {"sub_model": "small"}},
     {}, "rlm.sub_model"),
    ({"rlm": {"max_iterations": 0}}, {}, "rlm.max_iterations"),
    ({"sandbox": {"memory_mb": "lots"}}, {}, "sandbox.memory_mb"),
    ({"sandbox": {"worker_user": "no-such-user-here"}}, {}, "there is no user 'no-such-user-here'"),
    ({"sandbox": {"worker_user": "10:staff"}}, {}, "'10:staff' is neither a user name nor uid[:gid]"),
    ({"cache": {"ttl_s": 0}}, {}, "cache.ttl_s"),
    ({"cache": {"scope": "tenant"}}, {}, "cache.scope"),
    ({"cache": {"max_bytes": 1000}}, {}, "cache.max_bytes"),
    ({"server": {"release_memory_idle_s": 0}}, {}, "server.release_memory_idle_s"),
    ({"server": {"keys": [{"alias": "no key"}]}}, {}, "server.keys.0"),
    ({"server": {"keys": [{"key": "sk-a", "key_hash": SK_A_HASH}]}}, {}, "exactly one of key and key_hash"),
    ({"server": {"keys": [{"key_hash": "not-hex"}]}}, {}, "server.keys.0.key_hash"),
    ({"server": {"keys": [{"key": "sk-a"}, {"key_hash": SK_A_HASH.upper()}]}}, {},
     "keys[1] is the same key as keys[0]"),
    ({"server": {"master_key": "sk-a", "api_keys": ["sk-a"]}}, {},
     "master_key is the same key as api_keys[0]"),
    ({"server": {"keys": [{"key": "sk-a", "budget_duration": "1 month"}]}}, {},
     "server.keys.0.budget_duration"),
    ({"server": {"keys": [{"key": "sk-a", "rpm": -1}]}}, {}, "server.keys.0.rpm"),
    ({"server": {"keys": [{"key": "sk-a", "models": [""]}]}}, {}, "a model pattern must not be empty"),
    ({"server": {"keys": [{"key": "sk-a", "expires": "soon"}]}}, {}, "server.keys.0.expires"),
    ({"server": {"keys": [{"key": "sk-a", "rlm": {"allowed": True, "max_cost": 1}}]}}, {},
     "server.keys.0.rlm.max_cost"),
    ({"server": {"teams": [{"team": "a"}, {"team": "a", "rpm": 1}]}}, {}, "teams: a given more than once"),
    # LiteLLM settings rlm-proxy does not implement are refused by name, never ignored.
    ({"litellm_settings": {"drop_params": True}}, {}, "'litellm_settings.drop_params' is not supported"),
    ({"router_settings": {"redis_host": "r"}}, {}, "'router_settings.redis_host' is not supported"),
    ({"general_settings": {"database_url": "x"}}, {}, "'general_settings.database_url' is not supported"),
    ({"router_settings": {"routing_strategy": "usage-based-routing"}}, {},
     "router_settings.routing_strategy"),
    ({"router_settings": {"num_retries": 1}, "litellm_settings": {"num_retries": 2}}, {},
     "the retry count is given differently in router_settings.num_retries and litellm_settings.num_retries"),
    ({"general_settings": {"master_key": "sk-a"}, "server": {"master_key": "sk-b"}}, {},
     "the master key is given differently"),
    ({"general_settings": {"master_key": "sk-a"}, "server": {"api_keys": ["sk-a"]}}, {},
     "master_key is the same key as api_keys[0]"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "x", "weight": -1}}]}, {},
     "litellm_params.weight must be a positive number"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "x"}}],
      "router_settings": {"fallbacks": [{"m": ["nope"]}]}}, {}, "fallbacks: 'nope' is not a model_name"),
    ({"router_settings": {"context_window_fallbacks": [{"m": ["a"]}]},
      "litellm_settings": {"context_window_fallbacks": [{"m": ["b"]}]}}, {},
     "'m' has context_window_fallbacks in both router_settings and litellm_settings"),
])
def test_bad_config_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: object,
                                      environ: dict[str, str], names: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert names in str(info.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(tmp_path / "broken.yaml")


def test_serve_refuses_a_bad_config_with_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, {"server": {"max_body_bytes": -1}})
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server.max_body_bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_user_is_a_name_a_uid_or_uid_and_gid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _pool_limits(Settings()).worker_user is None  # by default workers start as the proxy's user
    nobody = pwd.getpwnam("nobody")
    assert (worker_ids("nobody"), worker_ids("1000"), worker_ids("1000:2000")) == (
        (nobody.pw_uid, nobody.pw_gid), (1000, 1000), (1000, 2000))
    monkeypatch.setenv("RLM_PROXY_SANDBOX__WORKER_USER", "nobody")
    settings = load_settings()
    assert _pool_limits(settings).worker_user == WorkerUser(nobody.pw_uid, nobody.pw_gid)


@pytest.mark.parametrize(("duration", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86_400),
                                                   ("30d", 2_592_000)])
def test_litellm_durations(duration: str, seconds: int) -> None:
    assert duration_seconds(duration) == seconds


def test_a_key_expiry_without_a_zone_is_utc(tmp_path: Path) -> None:
    key = {"key": "sk-a", "expires": "2030-01-02T03:04:05"}
    settings = load_settings(write(tmp_path, {"server": {"keys": [key]}}))
    assert settings.server.keys[0].expires == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
