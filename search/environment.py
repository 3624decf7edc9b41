"""The environment record every trial run carries, and the comparison `reproduce` makes.

Captured once per process (it shells out to git and nvidia-smi), logged as `env.*` tags.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("convsweep", "torch", "torchvision", "lightning", "optuna", "optuna-integration", "mlflow",
            "hydra-core", "numpy")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def environment_record() -> dict[str, str]:
    """git commit and dirty flag of the code, package versions, python, device and driver."""
    import torch

    code_dir = Path(__file__).resolve().parent.parent
    commit = _git(["rev-parse", "HEAD"], code_dir)
    record = {
        "git_commit": commit or "unknown",
        "git_dirty": str(bool(_git(["status", "--porcelain", "--untracked-files=no"], code_dir))) if commit else "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        **{f"pkg.{name}": _version(name) for name in PACKAGES},
        "cuda_available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        record["device_name"] = torch.cuda.get_device_name(0)
        record["cuda"] = str(torch.version.cuda)
        record["cudnn"] = str(torch.backends.cudnn.version())
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5)
            record["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            record["driver"] = "unknown"
    else:
        record["device_name"] = platform.processor() or platform.machine()
    return record


def environment_diff(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One line per key whose value differs between a recorded and the current environment."""
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: recorded {recorded.get(k, 'absent')}, now {current.get(k, 'absent')}"
            for k in keys if recorded.get(k) != current.get(k)]
