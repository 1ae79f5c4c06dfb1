from pathlib import Path

import msgspec
import pytest

from shared.config import (
    CommonConfig,
    ConfigError,
    Duration,
    Endpoint,
    apply_env,
    check_file,
    load_section,
)


class Pools(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ttl: Duration
    hit_tolerance: float = 0.0


class DemoSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = "tcp://127.0.0.1:5570"
    metrics_port: int = 9103
    pools: dict[str, Pools] = {}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("120m", 7200), ("6h", 21600), ("2d", 172800), ("250ms", 0.25), (5, 5), ("1.5h", 5400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "", "-3s", -1, True, "s", "1 hour"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        Duration.parse(text)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poolwire.yaml"
    path.write_text(text)
    return path


def test_section_loads_with_durations(tmp_path: Path) -> None:
    path = write(tmp_path, "common:\n  data_dir: /tmp/x\nregistry:\n  pools:\n    H1: {ttl: 120m}\n")
    common, cfg = load_section("registry", DemoSection, path, environ={})
    assert common == CommonConfig(data_dir="/tmp/x")
    assert cfg.pools["H1"].ttl == 7200.0


def test_bad_value_names_the_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "registry:\n  pools:\n    H4:\n      ttl: 6x\n")
    with pytest.raises(ConfigError, match=r"registry\.pools\.H4\.ttl: .*duration like 30s"):
        load_section("registry", DemoSection, path, environ={})


def test_wrong_type_and_unknown_key_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registry\.metrics_port: Expected `int`, got `str`"):
        load_section("registry", DemoSection, write(tmp_path, "registry: {metrics_port: abc}"), environ={})
    with pytest.raises(ConfigError, match=r"registry\.pools\.H1: .*unknown field `ttll`"):
        load_section(
            "registry", DemoSection, write(tmp_path, "registry: {pools: {H1: {ttll: 1s}}}"), environ={}
        )


def test_bad_endpoint_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registry\.pub: Expected `str` matching"):
        load_section(
            "registry", DemoSection, write(tmp_path, "registry: {pub: 'localhost:5570'}"), environ={}
        )


def test_env_overrides_endpoints_and_ports(tmp_path: Path) -> None:
    env = {"POOLWIRE_REGISTRY__PUB": "tcp://0.0.0.0:6000", "POOLWIRE_REGISTRY__METRICS_PORT": "9200"}
    _, cfg = load_section("registry", DemoSection, write(tmp_path, "registry: {}"), environ=env)
    assert cfg.pub == "tcp://0.0.0.0:6000"
    assert cfg.metrics_port == 9200


def test_env_override_nested_key() -> None:
    raw = apply_env(
        {"registry": {"pools": {"H1": {"ttl": "1h"}}}}, {"POOLWIRE_REGISTRY__POOLS__H1__TTL": "2h"}
    )
    assert raw == {"registry": {"pools": {"H1": {"ttl": "2h"}}}}


def test_unknown_section_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load_section("registry", DemoSection, write(tmp_path, "regsitry: {}"), environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section("registry", DemoSection, write(tmp_path, "registry: [unclosed"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_section("registry", DemoSection, tmp_path / "missing.yaml", environ={})


def test_check_file_reports_common_problems(tmp_path: Path) -> None:
    problems = check_file(write(tmp_path, "common: {heartbeat_interval: soon}"))
    assert len(problems) == 1
    assert problems[0].startswith("common.heartbeat_interval:")
    assert check_file(write(tmp_path, "common: {log_level: DEBUG}")) == []
