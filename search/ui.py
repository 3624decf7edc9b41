"""Serve the MLflow UI, and optionally optuna-dashboard, on a sweep's stores.

    convsweep ui [--port 5000] [--host 127.0.0.1] [--optuna [--optuna-port 8080]] [tracking.run_dir=DIR]

The servers run as child processes in their own session, so Ctrl-C reaches only this process,
which stops them and exits 0; a server that dies ends the command with one line. Store URIs
reach the children through the environment or a private file, never the command line, so a
password does not show in `ps` either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from convsweep.errors import ConvsweepError
from convsweep.search.masking import mask_uri
from convsweep.search.run_records import ROLE
from convsweep.search.storage import Locations, init_mlflow, resolve_locations

STARTUP_TIMEOUT_S = 120.0  # MLflow 3's server takes 15-20 s to answer on this machine (imports alone)
POLL_S = 0.5
STOP_TIMEOUT_S = 10.0  # per server, between SIGTERM and SIGKILL
_FIX = "run `convsweep sweep` first, or point tracking.run_dir= at the sweep's folder"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a proxy in the env must not see localhost


@dataclass
class _Server:
    """A child server: its process group, the file its output goes to, and the URL that answers once it is up."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def last_log_line(self) -> str:
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return mask_uri(lines[-1])[:300] if lines else "(no output)"

    def died(self) -> ConvsweepError:
        return ConvsweepError(f"the {self.name} stopped with exit code {self.proc.returncode}: {self.last_log_line()}")


def serve_ui(cfg: Any, host: str = "127.0.0.1", port: int = 5000, optuna_port: int | None = None,
             console: Any = None) -> int:
    """Serve the sweep's MLflow store (and Optuna storage) until Ctrl-C.

    Args:
        cfg: the composed config; only `tracking` is read.
        host: bind address of both servers; 127.0.0.1 keeps them on this machine.
        port: the MLflow UI's port.
        optuna_port: also start optuna-dashboard on this port; None: do not.
        console: rich Console for the URLs.

    Returns:
        0 once stopped by Ctrl-C (or SIGTERM).

    Raises:
        ConvsweepError: a port is taken, the store is empty or missing, optuna-dashboard is not
            installed, or a server does not start or dies.
    """
    if console is None:
        from rich.console import Console

        console = Console(highlight=False)
    if optuna_port == port:
        raise ConvsweepError(f"--port and --optuna-port are both {port}; give optuna-dashboard another port")
    ports = {"MLflow UI": port} | ({"optuna-dashboard": optuna_port} if optuna_port is not None else {})
    for name, p in ports.items():
        _check_port_free(host, p, name)
    loc = resolve_locations(cfg.tracking)
    dashboard = _optuna_dashboard_exe(loc) if optuna_port is not None else None
    client, exp = _study_experiment(loc, str(cfg.tracking.experiment_name))  # seconds: imports MLflow, opens the store
    browse_host = _browse_host(host)
    runs_url = _runs_link(client, f"http://{browse_host}:{port}", exp.experiment_id) if exp is not None else None

    servers: list[_Server] = []
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="convsweep-ui-") as tmp:
        try:
            console.print(f"starting the MLflow UI on {mask_uri(loc.mlflow_uri)} (about 20 s)", soft_wrap=True)
            mlflow_env = {"MLFLOW_BACKEND_STORE_URI": loc.mlflow_uri, "MLFLOW_DEFAULT_ARTIFACT_ROOT": loc.artifact_location,
                          "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job workers: 8 processes, unused here
                          "MLFLOW_DISABLE_TELEMETRY": "true"}
            servers.append(_start("MLflow UI", [sys.executable, "-m", "mlflow", "server", "--host", host,
                                                "--port", str(port), "--workers", "1"],
                                  mlflow_env, Path(tmp), f"http://{browse_host}:{port}/health"))
            if dashboard is not None:
                config = Path(tmp) / "optuna-dashboard.toml"  # private dir (0700): the storage URL stays out of argv
                config.write_text(_dashboard_toml(loc))
                servers.append(_start("optuna-dashboard", [dashboard, "--from-config", str(config), "--host", host,
                                                           "--port", str(optuna_port), "--quiet"],
                                      {}, Path(tmp), f"http://{browse_host}:{optuna_port}/dashboard/"))
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for server in servers:
                _wait_until_up(server, deadline)
            if exp is not None:
                console.print(f"MLflow UI: {runs_url} (experiment {exp.name})", soft_wrap=True)
            else:
                console.print(f"MLflow UI: http://{browse_host}:{port}/ (no experiment named "
                              f"{cfg.tracking.experiment_name}; pick one from the list)", soft_wrap=True)
            if len(servers) > 1:
                console.print(f"optuna-dashboard: {servers[1].url}", soft_wrap=True)
            console.print("Ctrl-C to stop")
            _watch(servers)
        except KeyboardInterrupt:
            console.print("stopping")
            return 0
        finally:
            _stop(servers)
            signal.signal(signal.SIGTERM, previous_term)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops like Ctrl-C: a killed parent would leave its servers holding the ports."""
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int, name: str) -> None:
    """Bind the port as the server would (SO_REUSEADDR, like uvicorn), so a taken port fails here in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConvsweepError(f"cannot serve the {name} on {host}:{port} ({exc.strerror}); "
                                 f"stop what uses it or pick another port") from None


def _study_experiment(loc: Locations, name: str) -> tuple[Any, Any]:
    """The store's client and the experiment to open: the study's, else the store's only sweep (e.g. `convsweep
    ui` without the sweep's `dataset=`), else None for the list; an empty or missing store is an error."""
    if loc.mlflow_uri.startswith("sqlite:///"):
        db = Path(loc.mlflow_uri[len("sqlite:///"):])
        if not db.is_file():
            raise ConvsweepError(f"no MLflow store at {db}; {_FIX}")
    client = init_mlflow(loc)
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "active":
        return client, exp
    sweeps = client.search_experiments(filter_string="name != 'Default'", max_results=2)
    if not sweeps:
        raise ConvsweepError(f"the MLflow store {mask_uri(loc.mlflow_uri)} holds no sweep yet; {_FIX}")
    return client, (sweeps[0] if len(sweeps) == 1 else None)


def _runs_link(client: Any, base_url: str, experiment_id: str) -> str:
    """The experiment's runs table with the trials best first by the sweep's metric (as its parent run records it).

    The UI keeps the sort in the URL (`orderByKey`, `orderByAsc`), and lists runs flat rather than
    folded under their parent whenever they are sorted by anything but start time: every trial shows.
    """
    query = {"workflowType": "machine_learning"}  # the runs table, not the GenAI traces view
    parents = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'parent'", max_results=1)
    metric = parents[0].data.params.get("metric") if parents else None
    if metric:
        query["orderByKey"] = f"metrics.`{metric}_best`"  # each trial's best epoch: the value Optuna ranks
        query["orderByAsc"] = str(parents[0].data.params.get("direction") == "minimize").lower()
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # metrics.%60val%2Facc_best%60
    return f"{base_url}/#/experiments/{experiment_id}/runs?{encoded}"


def _optuna_dashboard_exe(loc: Locations) -> str:
    """The optuna-dashboard script (an optional extra); a journal storage must exist to be served."""
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise ConvsweepError("optuna-dashboard is not installed; pip install 'convsweep[dashboard]'")
    if loc.is_journal and not Path(loc.optuna_url).is_file():
        raise ConvsweepError(f"no Optuna journal at {loc.optuna_url}; {_FIX}")
    return exe


def _dashboard_toml(loc: Locations) -> str:
    """optuna-dashboard's config: the storage and, for a journal file, its class (it cannot guess a path's kind)."""
    lines = ["[optuna_dashboard]", f"storage = {json.dumps(loc.optuna_url)}"]  # a JSON string is a TOML basic string
    if loc.is_journal:
        lines.append('storage_class = "JournalFileStorage"')
    return "\n".join(lines) + "\n"


def _browse_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to `host`."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _start(name: str, cmd: list[str], env: dict[str, str], log_dir: Path, url: str) -> _Server:
    """Start a server in its own session (so Ctrl-C in the terminal reaches only us), its output in a log file."""
    log = log_dir / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, start_new_session=True)
    return _Server(name, proc, log, url)


def _wait_until_up(server: _Server, deadline: float) -> None:
    """Poll the server's URL until it answers 200; fail if it dies or the deadline passes."""
    while True:
        if server.proc.poll() is not None:
            raise server.died()
        try:
            with _NO_PROXY.open(server.url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, or an HTTP error status while it starts
            pass
        if time.monotonic() > deadline:
            raise ConvsweepError(f"the {server.name} did not answer on {server.url} within {STARTUP_TIMEOUT_S:.0f} s; "
                                 f"its output ends: {server.last_log_line()}")
        time.sleep(POLL_S)


def _watch(servers: list[_Server]) -> NoReturn:
    """Block until a server exits on its own (Ctrl-C ends this with KeyboardInterrupt instead)."""
    while True:
        for server in servers:
            if server.proc.poll() is not None:
                raise server.died()
        time.sleep(POLL_S)


def _stop(servers: list[_Server]) -> None:
    """SIGTERM each server's process group (uvicorn, gunicorn workers), SIGKILL what outlives the timeout."""
    for server in servers:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.proc.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
