"""The compiled core: pure cores built with mypyc into C extensions, pure Python the fallback.

A group is a package whose pure modules mypyc compiles together (one C runtime library shared by
them). ``make install`` runs ``python -m shared.compiled build``: with a C compiler and the Python
headers it builds every group whose sources changed since its last build, next to the sources, and
records each source's digest in the package's ``.compiled.json``; without them it says so and the
pure modules run. At run time the package's ``__init__`` calls :func:`guard` before any of its
modules is imported: the extensions load only when they were built from the sources as they are now
(a stale build would run old code) and ``POOLWIRE_PURE`` is not set; otherwise every module of the
group loads from its ``.py`` and :func:`status` says why, which each service logs at start.

    python -m shared.compiled build [--force]   # compile what is stale (what `make install` does)
    python -m shared.compiled status            # compiled or pure, and why, per group
    python -m shared.compiled clean             # remove the extensions: pure Python from now on
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

PURE_ENV = "POOLWIRE_PURE"  # set (non-empty, not "0"): every group runs its pure modules
STAMP_NAME = ".compiled.json"
RUNTIME = "core__mypyc"  # the group's runtime library, built as <package>.core__mypyc
ROOT = Path(__file__).resolve().parent.parent

# package -> the modules compiled together: pure, synchronous, mypy-strict. A msgspec Struct with
# gc=False built by compiled code keeps the GC flag: a record the GC must not track is a native class
# with @mypyc_attr(acyclic=True), a Struct only where the module runs pure (when_pure).
# Their module-level constants and caches are ``Final``: compiled code reads a Final global as a C
# static, any other by a lookup in the module's dict at each use (a book's resize 0.77 -> 0.73 us).
GROUPS: dict[str, tuple[str, ...]] = {
    "services.registry": (
        "books",
        "candles",
        "detectors",
        "due",
        "entry",
        "heap",
        "messages",
        "patterns",
        "price_index",
        "registry",
        "stats",
        "wheel",
        "zones",
    ),
    "services.ingest": ("book", "handoff", "hashcheck", "parse", "router", "state"),
}

TREES = ("shared", "services")  # the project's packages, where an extension can only be a group's

_status: dict[str, str] = {}


def _package_dir(package: str) -> Path:
    return ROOT.joinpath(*package.split("."))


def _sources(package: str) -> dict[str, Path]:
    base = _package_dir(package)
    return {name: base / f"{name}.py" for name in GROUPS[package]}


def _extension(package: str, name: str) -> Path:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return _package_dir(package) / f"{name}{suffix}"


def _extensions(package: str) -> list[Path]:
    """Every file a build of the group makes: a module's each, and the group's runtime library
    (mypyc's ``<group>__mypyc``, inside the package so that it imports from anywhere)."""
    return [_extension(package, name) for name in (*GROUPS[package], RUNTIME)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_id() -> str:
    """What an extension is tied to besides its sources: the interpreter that loads it."""
    return f"{sys.implementation.cache_tag} {sysconfig.get_platform()}"


def why_pure(package: str) -> str | None:
    """None if the group's extensions are to be used, else the reason (``POOLWIRE_PURE``, or
    :func:`build_problem`)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV} is set"
    return build_problem(package)


def build_problem(package: str) -> str | None:
    """None if the group's extensions match its sources and this interpreter, else what is wrong."""
    extensions = _extensions(package)
    if not any(p.exists() for p in extensions):
        return "not built (make install builds it where a C compiler is present)"
    missing = [p.name for p in extensions if not p.exists()]
    if missing:
        return f"incomplete build (no {', '.join(missing)}): run make install"
    stamp_path = _package_dir(package) / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return f"no readable {STAMP_NAME} beside the extensions: run make install"
    if stamp.get("build") != _build_id():
        return f"built for {stamp.get('build')!r}, this interpreter is {_build_id()!r}: run make install"
    stale = [n for n, p in _sources(package).items() if stamp.get("sources", {}).get(n) != _digest(p)]
    if stale:
        return f"stale: {', '.join(sorted(stale))} changed since the build: run make install"
    return None


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their ``.py``, so an extension beside them is never used."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def guard(package: str) -> None:
    """Called by the package's ``__init__`` before its modules are imported (see the module doc)."""
    if package in _status:
        return
    reason = why_pure(package)
    _status[package] = _describe(reason)
    if reason is None:
        return
    sources = {f"{package}.{name}": path for name, path in _sources(package).items()}
    if any(p.exists() for p in _extensions(package)):
        sys.meta_path.insert(0, _SourceFirst(sources))


def status(package: str) -> str:
    """``compiled (mypyc)`` or ``pure Python: <why>``, as decided when the package was imported."""
    return _status.get(package) or _describe(why_pure(package))


def _describe(reason: str | None) -> str:
    return "compiled (mypyc)" if reason is None else f"pure Python: {reason}"


def is_compiled(module: ModuleType) -> bool:
    return _is_extension(module.__file__ or "")


def _is_extension(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def when_pure(module_globals: dict[str, Any], **stand_ins: object) -> None:
    """Called at the end of a group's module with its ``globals()``: run pure, its names are rebound
    to ``stand_ins``. For a record the GC must not track, a native acyclic class when compiled and a
    ``gc=False`` Struct when pure (a Python class would be tracked); or a routine the standard
    library has in C, which a sift in Python would not match (registry/entry.py, heap.py)."""
    if not _is_extension(module_globals["__file__"]):
        module_globals.update(stand_ins)


def pure_result(target: str) -> Any:
    """What ``module:function`` returns (JSON), called in a process that runs the pure modules:
    the benchmarks' compiled/pure ratios."""
    module, function = target.split(":")
    code = f"import json; from {module} import {function}; print(json.dumps({function}()))"
    env = {**os.environ, PURE_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


# Build ------------------------------------------------------------------------------------------


def missing_toolchain() -> str | None:
    """None if mypyc, a C compiler and the Python headers are present, else what is missing."""
    if importlib.util.find_spec("mypyc") is None:
        return "no mypyc (it comes with mypy: pip install -e '.[dev]')"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r} is not on PATH)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"no Python headers ({include} is missing; Debian: apt install python3-dev)"
    return None


def orphans() -> list[Path]:
    """Extensions under the project's packages that no group builds: what a group no longer in
    :data:`GROUPS` left. Nothing guards them, and Python imports an extension before a ``.py``."""
    built = {p for package in GROUPS for p in _extensions(package)}
    found = {
        p
        for top in TREES
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for p in (ROOT / top).rglob(f"*{suffix}")
    }
    return sorted(found - built)


def clean(package: str) -> None:
    for path in _extensions(package):
        path.unlink(missing_ok=True)
    (_package_dir(package) / STAMP_NAME).unlink(missing_ok=True)


def _installed() -> bool:
    """Whether the packages run from an installed copy (site-packages: the container image), not
    from this repository's checkout."""
    return not (ROOT / "pyproject.toml").exists()


def build(package: str) -> None:
    """Compile the group with mypyc: an extension beside each source, and the group's runtime
    library in the package.

    In the checkout the build runs in place (mypy reads the project's settings). An installed copy
    is built in a temporary copy of its packages (mypy must not take site-packages for a source
    tree: it would check every library there as the project's own), then the extensions move in.
    """
    from mypyc.build import mypycify
    from setuptools import setup

    clean(package)  # unlinked, not overwritten: a running service keeps the library it has mapped
    sources = _sources(package)
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="poolwire-mypyc-") as tmp:
        tree = ROOT
        if _installed():
            tree = Path(tmp) / "tree"
            for top in TREES:
                shutil.copytree(ROOT / top, tree / top, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            # the project's one mypy setting that matters here (pyproject.toml is not installed)
            (tree / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
        os.chdir(tree)
        try:
            extensions = mypycify(
                [str(p.relative_to(ROOT)) for p in sources.values()],
                opt_level="3",
                group_name=f"{package}.{RUNTIME.removesuffix('__mypyc')}",
            )
            setup(
                name=f"poolwire-{package}",
                ext_modules=extensions,
                script_args=["-q", "build_ext", "--inplace", "--build-temp", str(Path(tmp) / "build")],
            )
        finally:
            os.chdir(here)
        if tree != ROOT:
            for built in _extensions(package):
                shutil.move(tree / built.relative_to(ROOT), built)
    stamp = {"build": _build_id(), "sources": {n: _digest(p) for n, p in sources.items()}}
    (_package_dir(package) / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.compiled", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "status", "clean"])
    parser.add_argument("--force", action="store_true", help="build even the groups that are up to date")
    args = parser.parse_args(argv)
    if args.command in ("build", "clean"):
        for path in orphans():
            path.unlink()
            print(
                f"removed {path.relative_to(ROOT)}: no compiled group builds it (it would load before its .py)"
            )
    for package in GROUPS:
        if args.command == "status":
            print(f"{package}: {status(package)}")
        elif args.command == "clean":
            clean(package)
            print(f"{package}: extensions removed, pure Python from now on")
        elif (reason := build_problem(package)) is None and not args.force:
            print(f"{package}: compiled core up to date")
        elif (lacking := missing_toolchain()) is not None:
            clean(package)
            print(f"{package}: not compiled, {lacking}: the pure Python core runs")
        else:
            print(f"{package}: compiling with mypyc ({reason or 'forced'})", flush=True)
            try:
                build(package)
            except (Exception, SystemExit) as exc:  # setuptools reports a compiler error as SystemExit
                clean(package)
                print(f"{package}: compiling failed ({exc}): the pure Python core runs", file=sys.stderr)
                return 1
            print(f"{package}: compiled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
