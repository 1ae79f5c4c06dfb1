"""``python -m services NAME [NAME ...] --config FILE``: several services in one process.

One event loop runs them all; their publishers are read in-process by each other (shared.inproc)
and over their configured endpoints by everyone else. They share the process's fate: one that
ends stops the others. README, "Fewer processes".
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from shared.runner import Service, run_services

# name -> (config module and class, service module): imported only when named
SERVICES = {
    "ingest": ("services.ingest.config", "IngestConfig", "services.ingest.service"),
    "sync": ("services.sync.config", "SyncConfig", "services.sync.service"),
    "registry": ("services.registry.config", "RegistryConfig", "services.registry.service"),
    "alerts": ("services.alerts.config", "AlertsConfig", "services.alerts.service"),
}


def service(name: str) -> Service[Any]:
    config_module, config_type, main_module = SERVICES[name]
    section_type = getattr(importlib.import_module(config_module), config_type)
    return Service(name, section_type, importlib.import_module(main_module).main)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services", description="Several services in one process, on one event loop."
    )
    parser.add_argument(
        "names", nargs="+", choices=sorted(SERVICES), metavar="NAME", help=", ".join(SERVICES)
    )
    parser.add_argument("--config", help="YAML config file (default: $POOLWIRE_CONFIG)")
    args = parser.parse_args(argv)
    if len(set(args.names)) != len(args.names):
        parser.error(f"a service named twice: {' '.join(args.names)}")
    rest = ["--config", args.config] if args.config else []
    return run_services([service(n) for n in args.names], rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
