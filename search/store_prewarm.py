"""Build a new MLflow SQLite store while the sweep imports torch and Lightning, without writing to the run dir early.

Creating a fresh SQLite store runs MLflow's migrations: 5-12 s here (benchmarks/RESULTS.md,
section 5), as long as importing torch and Lightning. `start` runs them in a child process,
in parallel with those imports, on a database file in a private temporary directory.
`install` puts the file in place only after the sweep's checks have passed (`prepare_sweep`),
so a sweep that fails its checks still leaves the run directory untouched; `discard` drops it.
Any failure here only means the migrations run the usual way, in `init_mlflow`, which reports
store errors as one line.

    python -m convsweep.search.store_prewarm PATH   (what `start` runs: migrate a new store at PATH)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SQLITE = "sqlite:///"


class StorePrewarm:
    """A store being migrated in a child process for an MLflow URI that has no database yet."""

    def __init__(self, mlflow_uri: str) -> None:
        self.target = Path(mlflow_uri[len(SQLITE):])
        self.workdir = Path(tempfile.mkdtemp(prefix="convsweep-store-"))
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.workdir / "mlflow.db")],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})

    def install(self) -> bool:
        """Wait for the migrations; move the store into place unless one is there already. True when moved."""
        try:
            if self._proc.wait() != 0 or self.target.exists():
                return False
            staged = self.target.with_name(f".{self.target.name}.{os.getpid()}")
            try:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.workdir / "mlflow.db", staged)  # the temporary directory may be on another file system
                os.link(staged, self.target)  # never replaces a store another process created meanwhile
            except OSError:  # a store exists now, no hard links, a full disk: init_mlflow opens or reports it as usual
                return False
            finally:
                staged.unlink(missing_ok=True)
            return True
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop the child if it still runs and remove the temporary store."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(mlflow_uri: str) -> StorePrewarm | None:
    """Start migrating a new SQLite store for `mlflow_uri`; None when it is not SQLite or exists already."""
    if not mlflow_uri.startswith(SQLITE) or Path(mlflow_uri[len(SQLITE):]).exists():
        return None
    return StorePrewarm(mlflow_uri)


def _migrate(path: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(f"{SQLITE}{path}").search_experiments(max_results=1)


if __name__ == "__main__":
    _migrate(sys.argv[1])
