"""python benchmarks/model_queue.py [--models 8] [--train-s 1.0]

Claim (issue 12, item 2): logging a trial's model leaves the critical path. Side by side in
one process, on a fresh local MLflow store: "inline" logs the model and ends the run where the
trial ends (what `_complete` does without a queue); "queued" hands both to `ModelQueue`
(search/model_queue.py) and returns. Between two trials a sleep of `--train-s` stands in for
the next trial's training, during which the queue logs. The net is the `arch: small` default
on 1x28x28 inputs. Timed: the time a trial's end waits, per logged model. The first model
of each arm pays MLflow's model-module imports once per process and is shown apart.
"""

from __future__ import annotations

import tempfile
import time

import _common

from convsweep.dashboards.leaderboard import MODEL_URI
from convsweep.lightning_modules.arch import ArchSpec
from convsweep.lightning_modules.network import build_convnet
from convsweep.search import run_records as rr
from convsweep.search.compose import compose_config
from convsweep.search.model_logging import log_model
from convsweep.search.model_queue import ModelQueue
from convsweep.search.storage import init_mlflow, resolve_locations

SHAPE = (1, 28, 28)


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--models", type=int, default=8, help="models logged per arm (after the first)")
    p.add_argument("--train-s", type=float, default=1.0, help="simulated training between two trials")
    args = p.parse_args()
    _common.banner("benchmarks/model_queue.py", args)
    cfg = compose_config([])
    net = build_convnet(ArchSpec.from_dict(cfg.arch), SHAPE, 10)
    waits: dict[str, list[float]] = {"inline": [], "queued": []}
    first: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        client = init_mlflow(resolve_locations({"run_dir": tmp}))
        exp = client.create_experiment("bench")
        queue = ModelQueue()

        def inline(run_id: str) -> None:
            rr.finish_run(client, run_id, "COMPLETE", {"m": 1.0}, {MODEL_URI: log_model(run_id, net, SHAPE)})

        def queued(run_id: str) -> None:
            queue.log_and_finish(client, run_id, net, SHAPE, {"m": 1.0}, {})

        arms = {"inline": inline, "queued": queued}
        for i in range(args.models + 1):
            for name, arm in (arms.items() if i % 2 == 0 else reversed(list(arms.items()))):
                run_id = client.create_run(exp).info.run_id
                start = time.perf_counter()
                arm(run_id)
                wait = time.perf_counter() - start
                if name not in first:
                    first[name] = wait
                else:
                    waits[name].append(wait)
                time.sleep(args.train_s)  # the next trial trains; the queue logs meanwhile
        queue.close()
        statuses = {r.info.status for r in client.search_runs([exp])}
    print(f"\n{_common.machine()}")
    print(f"wait at a trial's end per logged model (ms), {args.models} models per arm after the first:")
    base = _common.median(waits["inline"])
    for name, values in waits.items():
        print(f"  {name:<7} median {1000 * _common.median(values):8.1f}  min {1000 * min(values):8.1f}  "
              f"max {1000 * max(values):8.1f}  {_common.median(values) / base:.3f}x   first model {1000 * first[name]:.0f} ms")
    print(f"every run ended: {statuses == {'FINISHED'}} ({sorted(statuses)})")
    print(f"RESULT queued: {1000 * _common.median(waits['queued']):.1f} ms per logged model on the critical path vs "
          f"{1000 * base:.1f} ms inline")


if __name__ == "__main__":
    main()
