"""python benchmarks/startup.py [--repeats 5] [--sweeps 3]

Claims: `convsweep --help` takes at most 1 s and well under half of `python -c 'import torch'`
(the CLI imports no heavy library before a command needs it); and the time from launching
`convsweep sweep` to the first trial's first training step is reported, with its phases, as a
ratio to `python -c "import torch, lightning.pytorch"` launched in turn with each sweep
(target <= 1.5x).

The first training step is detected from the outside, from the Optuna journal file the
sweep writes (polled every 10 ms): a trial's creation time is in its CREATE_TRIAL record; the
first and second epoch reports of the first trial that trains appear as intermediate values
(a trial refused before training, e.g. over `search.max_macs`, reports none and takes ~0.2 s). The first step
is put at (first report - one epoch), one epoch being (second report - first report), and
never before the first trial's creation; the quick config's epoch is 600 images, so on an
idle machine the estimate is within a fraction of a second.
Each sweep runs in a fresh run directory (so MLflow's store migration is included) and is
stopped once the second report is seen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import _common

CREATE_STUDY, CREATE_TRIAL, INTERMEDIATE = 0, 4, 7  # optuna JournalOperation codes
IMPORT_BASELINE = "import torch, lightning.pytorch"  # what any Lightning training script pays before its first step


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def watch_sweep(convsweep: str, run_dir: Path, timeout: float) -> dict[str, float]:
    """Launch a quick sweep and return seconds from launch to each milestone seen in its journal."""
    journal = run_dir / "optuna-journal.log"
    stderr = (run_dir / "stderr.log").open("w")
    launch = time.time()
    proc = subprocess.Popen([convsweep, "sweep", "experiment=quick", f"tracking.run_dir={run_dir}"],
                            stdout=subprocess.DEVNULL, stderr=stderr)
    seen: dict[str, float] = {}
    created: dict[int, float] = {}
    reports: list[float] = []
    trained: int | None = None
    try:
        while len(reports) < 2 and time.time() - launch < timeout and proc.poll() is None:
            time.sleep(0.01)
            now = time.time() - launch
            if not journal.exists():
                continue
            created.clear()
            for line in journal.read_text().splitlines():
                try:
                    log = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                op = log.get("op_code")
                if op == CREATE_STUDY:
                    seen.setdefault("study created (polled)", now)
                elif op == CREATE_TRIAL:  # trial ids count from 0 in creation order
                    created.setdefault(len(created), datetime.fromisoformat(log["datetime_start"]).timestamp() - launch)
                elif op == INTERMEDIATE and trained in (None, log.get("trial_id")) and len(reports) == int(log["step"]) < 2:
                    trained = int(log["trial_id"])  # the first trial that trains (one refused before training never reports)
                    reports.append(now)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr.close()
    if len(reports) < 2:
        raise RuntimeError(f"the sweep reported {len(reports)} epochs before stopping: "
                           f"{(run_dir / 'stderr.log').read_text()[-2000:]}")
    assert trained is not None
    seen["first trial created"] = created[0]
    seen["first trained trial created"] = created[trained]
    seen["first epoch reported (polled)"] = reports[0]
    # an epoch of a loaded machine can be shorter than the first: the step comes after the trial exists
    seen["first training step (estimated)"] = max(reports[0] - (reports[1] - reports[0]), created[trained])
    return seen


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweeps", type=int, default=3, help="sweeps launched to time the first training step")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one sweep may take to its second epoch")
    args = p.parse_args()
    convsweep = shutil.which("convsweep")
    if convsweep is None:
        sys.exit("convsweep is not on PATH; install the project: pip install -e '.[dev]'")
    _common.banner("benchmarks/startup.py", args)
    times = _common.interleave({
        "python -c 'import torch'": lambda: run([sys.executable, "-c", "import torch"]),
        "convsweep --help": lambda: run([convsweep, "--help"]),
    }, args.repeats).wall
    medians = _common.report("start-up wall time (s)", times)
    help_s, torch_s = medians["convsweep --help"], medians["python -c 'import torch'"]
    print(f"RESULT convsweep --help = {help_s:.2f} s = {help_s / torch_s:.2f}x import torch (targets <= 1 s, well under 0.5x)")

    if args.sweeps < 1:
        return
    milestones: dict[str, list[float]] = {}
    imports: list[float] = []  # the baseline, launched in turn with the sweeps so both see the same load
    for _ in range(args.sweeps):
        imports.append(_common.timed(lambda: run([sys.executable, "-c", IMPORT_BASELINE])))
        with tempfile.TemporaryDirectory() as tmp:
            for name, seconds in watch_sweep(convsweep, Path(tmp), args.timeout).items():
                milestones.setdefault(name, []).append(seconds)
    print(f"\n{_common.machine()}")
    print(f"python -c '{IMPORT_BASELINE}': median {_common.median(imports):.2f} s "
          f"({', '.join(f'{v:.2f}' for v in imports)})")
    print("\nconvsweep sweep experiment=quick (fresh run dir), seconds from launch:")
    for name, values in sorted(milestones.items(), key=lambda kv: _common.median(kv[1])):
        print(f"  {name:<34} median {_common.median(values):6.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    steps = milestones["first training step (estimated)"]
    first_step = _common.median(steps)
    paired = _common.median([s / i for s, i in zip(steps, imports)])
    print(f"RESULT launch -> first training step = {first_step:.1f} s = {first_step / _common.median(imports):.2f}x "
          f"'{IMPORT_BASELINE}' (paired {paired:.2f}x; target <= 1.5x), {first_step / torch_s:.1f}x import torch")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
