"""PerformanceConfig: defaults, sources, precedence, presets and every validation path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins import ConfigError, PerformanceConfig
from rag_perf_plugins.cli import main as cli_main
from rag_perf_plugins.config import PRESETS

SEED_DEFAULTS: dict[str, object] = {
    "connection_pool_size": 20,
    "connection_timeout": 30.0,
    "enable_connection_pooling": True,
    "enable_caching": True,
    "cache_size": 10_000,
    "cache_ttl": 3600.0,
    "async_enabled": True,
    "max_concurrent_requests": 50,
    "batch_size": 20,
    "enable_metrics": True,
}

SEED_PRESETS: dict[str, dict[str, object]] = {
    "high-throughput": {
        "connection_pool_size": 50,
        "cache_size": 50_000,
        "async_enabled": True,
        "max_concurrent_requests": 100,
        "batch_size": 50,
        "enable_connection_pooling": True,
    },
    "low-latency": {
        "connection_pool_size": 20,
        "cache_size": 10_000,
        "cache_ttl": 1800.0,
        "async_enabled": True,
        "max_concurrent_requests": 20,
        "batch_size": 10,
    },
    "memory-constrained": {
        "connection_pool_size": 5,
        "cache_size": 1000,
        "cache_ttl": 900.0,
        "async_enabled": False,
        "max_concurrent_requests": 5,
        "batch_size": 5,
    },
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "perf.yaml"
    path.write_text(text)
    return path


def test_seed_defaults() -> None:
    config = PerformanceConfig()
    for key, value in SEED_DEFAULTS.items():
        assert getattr(config, key) == value, key


def test_immutable_and_replace() -> None:
    config = PerformanceConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cache_size = 5  # type: ignore[misc]
    smaller = config.replace(cache_size=5)
    assert smaller.cache_size == 5 and config.cache_size == 10_000
    assert smaller.source_of("cache_size") == "argument"
    with pytest.raises(ConfigError, match="cache_size"):
        config.replace(cache_size=-1)
    with pytest.raises(ConfigError, match="did you mean cache_size"):
        config.replace(cache_szie=5)


@pytest.mark.parametrize("name", sorted(SEED_PRESETS))
def test_presets_have_the_seed_values(name: str) -> None:
    config = PerformanceConfig.from_preset(name)
    for key, value in SEED_PRESETS[name].items():
        assert getattr(config, key) == value, (name, key)
        assert config.source_of(key) == f"preset {name}"


def test_every_preset_key_is_a_config_key() -> None:
    names = {f.name for f in PerformanceConfig.fields()}
    for preset in PRESETS.values():
        assert set(preset) <= names


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean low-latency") as info:
        PerformanceConfig.from_preset("low-latncy")
    assert "high-throughput" in str(info.value)


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(
        ConfigError, match=r"cache_szie: unknown config key.*did you mean cache_size"
    ):
        PerformanceConfig.from_dict({"cache_szie": 5})
    with pytest.raises(ConfigError) as info:
        PerformanceConfig.load(zzz_totally_unknown=1)
    assert info.value.key == "zzz_totally_unknown"
    assert "config show" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("cache_size", "20", "expected int, got str"),
        ("cache_size", True, "expected int, got bool"),
        ("cache_size", 1.5, "expected int, got float"),
        ("connection_timeout", "fast", "expected float, got str"),
        ("connection_timeout", 0, "out of range"),
        ("enable_caching", 1, "expected bool, got int"),
        ("batch_size", 0, "out of range"),
        ("batch_size", 4096, "out of range"),
        ("cache_vector_dtype", "float16", "not an allowed value"),
        ("provider_profile", None, "null is not allowed"),
        ("retry_budget_ratio", -0.1, "out of range"),
        ("cache_dir", 5, "expected str or null, got int"),
    ],
)
def test_bad_values_name_key_value_and_allowed(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(**{key: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{key}={value!r}")
    assert fragment in message
    assert "allowed:" in message
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


def test_allowed_text_states_bounds_and_units() -> None:
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(cache_ttl=-1.0)
    assert "allowed: a number > 0 (seconds) or null" in str(info.value)
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(cache_vector_dtype="x")  # type: ignore[arg-type]
    assert "one of 'float32', 'float64'" in str(info.value)


def test_int_is_accepted_for_float_and_null_for_optional() -> None:
    config = PerformanceConfig(connection_timeout=5, cache_ttl=None, requests_per_minute=None)
    assert config.connection_timeout == 5 and config.cache_ttl is None


def test_yaml_loading_with_sources_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "# Performance Configuration\ncache_size: 500\ncache_ttl: null\n")
    config = PerformanceConfig.from_yaml(path)
    assert config.cache_size == 500 and config.cache_ttl is None
    assert config.source_of("cache_size") == f"file {path}:2"
    assert config.source_of("batch_size") == "default"


def test_yaml_nested_performance_section_and_preset(tmp_path: Path) -> None:
    path = write(tmp_path, "performance:\n  preset: low-latency\n  batch_size: 12\n")
    config = PerformanceConfig.from_yaml(path)
    assert config.batch_size == 12 and config.cache_ttl == 1800.0
    assert config.source_of("cache_ttl") == "preset low-latency"


def test_yaml_malformed_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cache_size: 5\nbatch_size: [1, 2\nfoo: 3\n")
    with pytest.raises(ConfigError) as info:
        PerformanceConfig.from_yaml(path)
    assert str(path) in str(info.value) and "malformed YAML" in str(info.value)
    assert f"{path}:" in str(info.value)


def test_yaml_bad_value_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cache_size: 5\n\nbatch_size: lots\n")
    with pytest.raises(ConfigError, match=rf"batch_size='lots'.*expected int.*{path}:3"):
        PerformanceConfig.from_yaml(path)


def test_yaml_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "cache_size: 5\nmax_concurent_requests: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:2.*did you mean max_concurrent_requests"):
        PerformanceConfig.from_yaml(path)


def test_yaml_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        PerformanceConfig.from_yaml(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="preset must be a string"):
        PerformanceConfig.from_yaml(write(tmp_path, "preset: 3\n"))


def test_yaml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        PerformanceConfig.from_yaml(tmp_path / "missing.yaml")


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert PerformanceConfig.from_yaml(write(tmp_path, "")) == PerformanceConfig()


def test_env_parsing() -> None:
    config = PerformanceConfig.from_env(
        {
            "RAG_PERF_CACHE_SIZE": "1_000",
            "RAG_PERF_ENABLE_CACHING": "off",
            "RAG_PERF_CACHE_TTL": "none",
            "RAG_PERF_CONNECTION_TIMEOUT": "2.5",
            "RAG_PERF_REDIS_URL": "redis://127.0.0.1:6379/0",
            "RAG_PERF_REQUIRE_REDIS": "1",  # not a config key, but ours: ignored
            "PATH": "/bin",
        }
    )
    assert config.cache_size == 1000 and config.enable_caching is False
    assert config.cache_ttl is None and config.connection_timeout == 2.5
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.source_of("cache_size") == "env RAG_PERF_CACHE_SIZE"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RAG_PERF_CACHE_SZIE": "1"}, "did you mean cache_size"),
        ({"RAG_PERF_ENABLE_CACHING": "maybe"}, "expected true or false"),
        ({"RAG_PERF_CACHE_SIZE": "many"}, "expected int"),
        ({"RAG_PERF_CACHE_SIZE": "-4"}, "out of range"),
        ({"RAG_PERF_BATCH_SIZE": ""}, "expected int"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        PerformanceConfig.from_env(env)
    assert next(iter(env)) in str(info.value)


def test_precedence_kwargs_over_env_over_file_over_preset(tmp_path: Path) -> None:
    path = write(
        tmp_path, "preset: high-throughput\ncache_size: 111\nbatch_size: 7\ncache_ttl: 9\n"
    )
    env = {"RAG_PERF_BATCH_SIZE": "8", "RAG_PERF_CACHE_TTL": "10"}
    config = PerformanceConfig.load(path, env=env, cache_ttl=11.0)
    assert config.connection_pool_size == 50  # preset
    assert config.cache_size == 111  # file over preset
    assert config.batch_size == 8  # env over file
    assert config.cache_ttl == 11.0  # kwargs over env
    assert config.source_of("connection_pool_size") == "preset high-throughput"
    assert config.source_of("cache_size").startswith("file ")
    assert config.source_of("batch_size") == "env RAG_PERF_BATCH_SIZE"
    assert config.source_of("cache_ttl") == "argument"
    # an explicit preset argument wins over the file's preset key
    assert PerformanceConfig.load(path, preset="low-latency", env={}).connection_pool_size == 20


def test_load_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_PERF_CACHE_SIZE", "77")
    assert PerformanceConfig.load().cache_size == 77
    assert PerformanceConfig().cache_size == 10_000  # the plain constructor reads no env


def test_equality_ignores_sources() -> None:
    assert PerformanceConfig.load(env={}, cache_size=5) == PerformanceConfig(cache_size=5)


def test_to_dict_and_fields_cover_every_key() -> None:
    data = PerformanceConfig().to_dict()
    names = [f.name for f in PerformanceConfig.fields()]
    assert list(data) == names
    assert "_sources" not in data
    for spec in PerformanceConfig.fields():
        assert spec.doc, spec.name
        spec.check(spec.default)


def test_cli_config_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "cache_size: 321\n")
    assert cli_main(["config", "show", "--preset", "low-latency", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cache_size" in out and "321" in out and "preset low-latency" in out


def test_cli_config_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "show", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_cli_config_show_prints_the_directory_in_use_and_hides_passwords(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAG_PERF_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs' default root
    monkeypatch.setenv("RAG_PERF_REDIS_URL", "redis://app:pl4nted-s3cret@127.0.0.1:6379/0")
    assert cli_main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "pl4nted-s3cret" not in out and "app:***@127.0.0.1" in out
    # The value column folds long paths onto more lines: join the cells of the row.
    cells = [line.split("│") for line in out.splitlines() if line.count("│") == 5]
    first = next(i for i, c in enumerate(cells) if c[1].strip() == "cache_dir")
    row = [cells[first]]
    for c in cells[first + 1 :]:
        if c[1].strip():
            break
        row.append(c)
    value = "".join(c[2].strip() for c in row)
    assert value == repr(str(tmp_path / "xdg" / "rag-perf-plugins"))


def test_the_constructor_names_an_unknown_key_like_load() -> None:
    with pytest.raises(
        ConfigError, match=r"cache_szie: unknown config key .*did you mean cache_size"
    ):
        PerformanceConfig(cache_szie=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="keyword arguments only"):
        PerformanceConfig(10)


@pytest.mark.parametrize(
    "source",
    [
        lambda: PerformanceConfig(batch_max_wait_ms=5.0),  # type: ignore[call-arg]
        lambda: PerformanceConfig.load(batch_max_wait_ms=5.0),
        lambda: PerformanceConfig.from_env({"RAG_PERF_BATCH_MAX_WAIT_MS": "5"}),
    ],
)
def test_the_old_millisecond_batch_wait_is_refused_naming_the_new_key(source: Any) -> None:
    with pytest.raises(ConfigError, match=r"(?i)renamed .*max_wait_time.*seconds") as info:
        source()
    assert info.value.key == "batch_max_wait_ms"


def test_batch_wait_is_in_seconds_everywhere() -> None:
    assert PerformanceConfig().max_wait_time == 0.005
    assert PerformanceConfig.from_preset("high-throughput").max_wait_time == 0.020
    assert PerformanceConfig.from_env({"RAG_PERF_MAX_WAIT_TIME": "0.25"}).max_wait_time == 0.25


# --- Redis modes --------------------------------------------------------------------------
def test_a_malformed_redis_url_is_refused_naming_the_key_and_the_schemes() -> None:
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(redis_url="redis//127.0.0.1:6379/0")
    assert info.value.key == "redis_url"
    assert "redis://, rediss:// or unix://" in str(info.value)


@pytest.mark.parametrize("text", ["127.0.0.1", "h:0", "h:70000", "h:port", ":26379", ","])
def test_malformed_sentinels_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(redis_sentinels=text)
    assert info.value.key == "redis_sentinels"
    assert "host:port" in str(info.value)


def test_sentinels_parse_with_spaces_and_ipv6() -> None:
    from rag_perf_plugins.config import parse_sentinels

    assert parse_sentinels(" a:1, [::1]:26379 ,") == (("a", 1), ("::1", 26379))


def test_redis_mode_is_one_of_three_and_a_cluster_needs_tcp() -> None:
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(redis_mode="clustered")  # type: ignore[arg-type]
    assert info.value.key == "redis_mode" and "sentinel" in str(info.value)
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(redis_url="unix:///run/redis.sock", redis_mode="cluster")
    assert info.value.key == "redis_url"
    with pytest.raises(ConfigError) as info:
        PerformanceConfig(redis_url="redis://10.0.0.1:7000/3", redis_mode="cluster")
    assert info.value.key == "redis_url" and "one database" in str(info.value)
    assert PerformanceConfig(redis_url="redis://10.0.0.1:7000", redis_mode="cluster")
