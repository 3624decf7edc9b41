"""The built wheel holds one import namespace, `convsweep`, and works as a plain (non-editable) install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, text=True)
    return next(out.glob("convsweep-*.whl"))


def test_wheel_has_convsweep_as_its_only_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"convsweep", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "convsweep/conf/config.yaml" in names and "convsweep/conf/search_space/default.yaml" in names


def test_plain_install_imports_and_composes_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"  # PYTHONPATH comes before site-packages, so the unpacked wheel wins
    zipfile.ZipFile(wheel).extractall(target)  # what `pip install` unpacks; dependencies come from this env
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    code = ("import convsweep, convsweep.search.compose as c; "
            "assert c.__file__.startswith(%r), c.__file__; "
            "print(c.compose_config(['dataset=digits']).dataset.name)") % str(target)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "digits"
