"""The compiled cores (shared/compiled.py): built where a compiler is, used only when built from the
sources as they are, the pure modules otherwise; and their services' tests pass on both."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import services.registry.registry
from shared import compiled

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.parametrize("package", sorted(compiled.GROUPS))
def test_each_core_is_compiled_where_a_compiler_is(package: str) -> None:
    """`make install` builds them; where it cannot, the status says why (and the pure cores run)."""
    modules = [importlib.import_module(f"{package}.{name}") for name in compiled.GROUPS[package]]
    status = compiled.status(package)
    if os.environ.get(compiled.PURE_ENV):
        assert status == f"pure Python: {compiled.PURE_ENV} is set"
        assert not any(compiled.is_compiled(m) for m in modules)
    elif compiled.missing_toolchain() is None:
        assert status == "compiled (mypyc)"
        assert all(compiled.is_compiled(m) for m in modules)
    else:
        assert status.startswith("pure Python: not built")
        assert not any(compiled.is_compiled(m) for m in modules)


def test_a_compiled_core_imports_whatever_the_working_directory(tmp_path: Path) -> None:
    """Its runtime library sits in its package: a service started elsewhere finds it too."""
    code = (
        "import services.registry.registry as r, services.ingest.router as i; from shared import compiled;"
        "print(compiled.is_compiled(r), compiled.is_compiled(i))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    built = compiled.is_compiled(services.registry.registry)
    assert run.stdout.split() == [str(built), str(built)]


@pytest.mark.timeout(600)
def test_the_cores_tests_pass_on_the_pure_modules_too() -> None:
    """This run uses the compiled cores where they are built: their tests again on the pure ones."""
    if not compiled.is_compiled(services.registry.registry):
        return  # this run is the pure one
    tests = [f"tests/{package.split('.')[-1]}" for package in sorted(compiled.GROUPS)]
    tests += ["tests/shared/test_bars.py", "tests/alerts/test_bars.py"]  # the registry's bars, as shared.bars
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=-q -p no:cacheprovider", *tests, __file__],
        cwd=ROOT,
        env={**os.environ, compiled.PURE_ENV: "1"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]


# The guard, on a package of its own whose "extensions" are files no loader could load: importing
# one of them raises, so a module that imports was loaded from its source.


@pytest.fixture
def group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    package = "guardpkg_" + tmp_path.name.replace("-", "_")
    base = tmp_path / package
    base.mkdir()
    (base / "__init__.py").write_text("")
    for name in ("core", "wheel"):
        (base / f"{name}.py").write_text(f"WHERE = 'source of {name}'\n")
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    monkeypatch.setattr(compiled, "GROUPS", {package: ("core", "wheel")})
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = list(sys.meta_path)
    yield package
    sys.meta_path[:] = before
    for name in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[name]
    compiled._status.pop(package, None)


def fake_build(package: str) -> None:
    """What a build leaves: an extension per module (here not loadable) and the stamp."""
    base = compiled.ROOT / package
    for name in (*compiled.GROUPS[package], compiled.RUNTIME):
        (base / f"{name}{SUFFIX}").write_bytes(b"not an ELF file")
    sources = {n: compiled._digest(base / f"{n}.py") for n in compiled.GROUPS[package]}
    (base / compiled.STAMP_NAME).write_text(json.dumps({"build": compiled._build_id(), "sources": sources}))


def test_a_build_of_the_sources_as_they_are_is_used(group: str) -> None:
    fake_build(group)
    assert compiled.why_pure(group) is None
    compiled.guard(group)
    assert compiled.status(group) == "compiled (mypyc)"
    with pytest.raises(ImportError):  # the (unloadable) extension is what the import system takes
        importlib.import_module(f"{group}.core")


def test_a_changed_source_makes_the_whole_group_load_from_source(group: str) -> None:
    fake_build(group)
    (compiled.ROOT / group / "wheel.py").write_text("WHERE = 'source of wheel, edited'\n")
    compiled.guard(group)
    assert compiled.status(group) == "pure Python: stale: wheel changed since the build: run make install"
    # core did not change, yet it loads from source too: a group's modules call each other natively
    assert importlib.import_module(f"{group}.core").WHERE == "source of core"
    assert importlib.import_module(f"{group}.wheel").WHERE == "source of wheel, edited"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("stamp", "no readable .compiled.json beside the extensions: run make install"),
        ("extension", "incomplete build (no wheel{suffix}): run make install"),
        ("interpreter", "built for 'cpython-27 elsewhere', this interpreter is {build!r}: run make install"),
    ],
)
def test_a_build_that_cannot_be_trusted_is_not_used(group: str, damage: str, reason: str) -> None:
    fake_build(group)
    base = compiled.ROOT / group
    if damage == "stamp":
        (base / compiled.STAMP_NAME).unlink()
    elif damage == "extension":
        (base / f"wheel{SUFFIX}").unlink()
    else:
        stamp = json.loads((base / compiled.STAMP_NAME).read_text())
        (base / compiled.STAMP_NAME).write_text(json.dumps({**stamp, "build": "cpython-27 elsewhere"}))
    compiled.guard(group)
    assert compiled.status(group) == "pure Python: " + reason.format(
        suffix=SUFFIX, build=compiled._build_id()
    )
    assert importlib.import_module(f"{group}.core").WHERE == "source of core"


def test_pure_env_loads_the_sources_even_of_a_good_build(group: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(group)
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    compiled.guard(group)
    assert compiled.status(group) == f"pure Python: {compiled.PURE_ENV} is set"
    assert importlib.import_module(f"{group}.wheel").WHERE == "source of wheel"


def test_no_build_is_pure_python_with_nothing_in_the_way(group: str) -> None:
    before = list(sys.meta_path)
    compiled.guard(group)
    assert compiled.status(group).startswith("pure Python: not built")
    assert sys.meta_path == before  # nothing to steer around
    assert importlib.import_module(f"{group}.core").WHERE == "source of core"


def test_build_without_a_compiler_says_so_and_removes_an_old_build(
    group: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_build(group)
    (compiled.ROOT / group / "core.py").write_text("WHERE = 'new'\n")  # stale: a build is due
    monkeypatch.setattr(compiled, "missing_toolchain", lambda: "no C compiler ('cc' is not on PATH)")
    assert compiled.main(["build"]) == 0
    out = capsys.readouterr().out
    assert f"{group}: not compiled, no C compiler ('cc' is not on PATH): the pure Python core runs" in out
    assert not list((compiled.ROOT / group).glob(f"*{SUFFIX}"))
    assert compiled.why_pure(group) == "not built (make install builds it where a C compiler is present)"


@pytest.mark.parametrize("command", ["build", "clean"])
def test_an_extension_no_group_builds_is_removed(
    group: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group taken out of GROUPS leaves extensions that nothing guards: Python would import
    them before the sources they were built from."""
    fake_build(group)
    gone = compiled.ROOT / "services" / "oldgroup"
    gone.mkdir(parents=True)
    (gone / "amm.py").write_text("WHERE = 'source'\n")
    (gone / f"amm{SUFFIX}").write_bytes(b"an old build")
    assert compiled.main([command]) == 0
    assert not (gone / f"amm{SUFFIX}").exists() and (gone / "amm.py").exists()
    assert f"removed services/oldgroup/amm{SUFFIX}: no compiled group builds it" in capsys.readouterr().out
    assert (compiled.ROOT / group / f"core{SUFFIX}").exists() == (command == "build")


def test_build_leaves_an_up_to_date_group_alone(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake_build(group)
    assert compiled.main(["build"]) == 0
    assert f"{group}: compiled core up to date" in capsys.readouterr().out
    assert (compiled.ROOT / group / f"core{SUFFIX}").read_bytes() == b"not an ELF file"


def test_a_modules_stand_ins_replace_its_names_only_where_it_runs_from_its_source() -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    pure: dict[str, object] = {"__file__": "/x/services/registry/heap.py", "Item": "native"}
    built: dict[str, object] = {"__file__": f"/x/services/registry/heap{suffix}", "Item": "native"}
    for module_globals in (pure, built):
        compiled.when_pure(module_globals, Item="struct")
    assert pure["Item"] == "struct" and built["Item"] == "native"
