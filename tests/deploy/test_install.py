"""The image's install: what deploy/Dockerfile copies installs with `pip install .` (not editable)
into a fresh venv, and the entry points run from that install alone (~20 s, most of it pip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.deployfiles import ROOT, dockerfile_copies


def _copy_build_context(dest: Path) -> None:
    """What the Dockerfile's build stage copies, where it copies it."""
    build, _ = dockerfile_copies()
    for srcs, target in build:
        for src in srcs:
            path = ROOT / src
            to = dest / target / path.name if target.endswith("/") else dest / target
            if path.is_dir():
                shutil.copytree(path, to, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, to)


def test_the_image_install_pip_install_dot_runs_every_entry_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _copy_build_context(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOLWIRE_", "PYTHONPATH"))}
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    outside = tmp_path / "elsewhere"  # not the source tree: only the installed package can answer
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=outside, env=env, capture_output=True, text=True, timeout=60)

    where = run(str(venv / "bin" / "python"), "-c", "import shared, services; print(shared.__file__)")
    assert where.returncode == 0 and str(venv) in where.stdout, where
    out = run(str(venv / "bin" / "poolwire"), "--help")
    assert out.returncode == 0 and "tap" in out.stdout, out
    for module in (
        "services.registry",
        "services.ingest",
        "services.sync",
        "services.alerts",
        "services.alerts.worker",
    ):
        out = run(str(venv / "bin" / "python"), "-m", module, "--help")
        assert out.returncode == 0 and "--config" in out.stdout, (module, out.stderr[-2000:])
