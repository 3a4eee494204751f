"""Packaging: the wheel carries the tasks' default configs (medvtc/configs/*.yaml, package data),
and an installed (non-editable) medvtc finds them, instead of silently falling back to the
dataclass defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medvtc.common.task import CONFIGS_DIR
from medvtc.tasks import get_task, task_names

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", task_names())
def test_every_task_has_its_default_config_in_the_package(name):
    path = get_task(name).default_config_path()
    assert path is not None and path.is_file(), f"medvtc/configs/{name}.yaml is missing"
    assert path.parent == CONFIGS_DIR == REPO / "medvtc" / "configs"


@pytest.mark.timeout(60)
def test_wheel_carries_the_configs_and_an_installed_medvtc_finds_them(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info; offline: no index, no isolation
    # (setuptools from the environment; its own bdist_wheel, no `wheel` package needed).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "medvtc", src / "medvtc", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=50)
    (wheel,) = (tmp_path / "dist").glob("medvtc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"medvtc/configs/{p.name}" for p in CONFIGS_DIR.glob("*.yaml")}
    assert {f"medvtc/configs/{name}.yaml" for name in task_names()} <= expected <= names

    # Installed (not editable): each task's default config is the wheel's copy.
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=50)
    code = (
        "import medvtc, medvtc.tasks as t; print(medvtc.__file__); "
        "[print(t.get_task(n).default_config_path()) for n in t.task_names()]"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=50)
    assert r.returncode == 0, r.stderr
    module, *configs = r.stdout.split()
    assert Path(module).is_relative_to(site)
    assert configs == [str(site / "medvtc" / "configs" / f"{n}.yaml") for n in task_names()]
