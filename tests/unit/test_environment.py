"""environment.yml (conda) and pyproject.toml (pip) declare the same environment."""

from __future__ import annotations

import os
import re

import tomllib
import yaml
from support import REPO

CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
CONDA_ONLY = {"python", "pip"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def _conda() -> dict[str, str]:
    with open(os.path.join(REPO, "environment.yml")) as f:
        env = yaml.safe_load(f)
    deps = {}
    for d in env["dependencies"]:
        if isinstance(d, str):
            name, spec = _split(d)
            if name not in CONDA_ONLY:
                deps[CONDA_TO_PIP.get(name, name)] = spec
    return deps


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_same_packages_and_versions():
    pip = dict(_split(r) for r in _pyproject()["dependencies"])
    assert _conda() == pip


def test_conda_env_installs_this_project_and_python_matches():
    with open(os.path.join(REPO, "environment.yml")) as f:
        env = yaml.safe_load(f)
    pips = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert pips and "-e ." in pips[0]["pip"]
    py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py == [f"python{_pyproject()['requires-python']}"]


def test_users_get_a_torch_range_and_a_test_extra():
    deps = dict(_split(r) for r in _pyproject()["dependencies"])
    assert deps["torch"].startswith(">="), "users declare a range, not a pin"
    test = {_split(r)[0] for r in _pyproject()["optional-dependencies"]["test"]}
    assert {"pytest", "pytest-timeout", "hypothesis", "nbclient", "playwright", "mpi4py"} <= test
