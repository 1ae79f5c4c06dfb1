"""Readers for the deployment files: Procfiles, deploy/compose.yaml, the Dockerfile, Prometheus."""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT as ROOT

DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "poolwire.yaml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "poolwire.json"

# the config section each runnable module reads (an alert worker reads the alerts section)
SECTION_OF = {
    "services.ingest": "ingest",
    "services.sync": "sync",
    "services.registry": "registry",
    "services.alerts": "alerts",
    "services.alerts.worker": "alerts",
    "services.simulator": "simulator",
}


def procfiles() -> list[Path]:
    return sorted(ROOT.glob("Procfile*"))


def procfile_lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        out[name.strip()] = command.strip()
    return out


def python_modules(command: str) -> list[str]:
    """Every ``python -m MODULE`` in a shell command line."""
    return re.findall(r"\bpython3?\s+-m\s+([\w.]+)", command)


def runnable(module: str) -> bool:
    """``python -m module`` would run something: a package with __main__, or a module with a main guard."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and '__name__ == "__main__"' in Path(spec.origin).read_text()


_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""
    env = environ or {}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        return default if op in (":-", "-") else ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


@dataclass
class Container:
    name: str
    command: list[str]
    env: dict[str, str]  # interpolated with the defaults
    raw: dict[str, Any]

    @property
    def module(self) -> str | None:
        mods = python_modules(" ".join(self.command))
        return mods[0] if mods else None

    @property
    def section(self) -> str | None:
        return SECTION_OF.get(self.module or "")

    def overrides(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("POOLWIRE_")}


def containers() -> list[Container]:
    out = []
    for name, svc in compose()["services"].items():
        command = svc.get("command", [])
        if isinstance(command, str):
            command = shlex.split(command)
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out.append(
            Container(name, [str(c) for c in command], {k: interpolate(str(v)) for k, v in env.items()}, svc)
        )
    return out


def poolwire_containers() -> list[Container]:
    return [c for c in containers() if c.section is not None]


def dockerfile_copies() -> tuple[list[tuple[list[str], str]], list[list[str]]]:
    """(COPY sources and destination of the build stage, the final stage's COPY sources from the context)."""
    build: list[tuple[list[str], str]] = []
    final: list[list[str]] = []
    stage = 0
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0].upper() == "FROM":
            stage += 1
        elif words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            srcs, dest = words[1:-1], words[-1]
            if stage == 1:
                build.append((srcs, dest))
            else:
                final.append(srcs)
    return build, final


def prometheus_targets() -> dict[str, str]:
    """target (host:port) -> job."""
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    return {
        target: job["job_name"]
        for job in cfg["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
