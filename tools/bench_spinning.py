"""Benchmark onnxruntime's spinning stop (``session.force_spinning_stop``) on the default model.

swag_onnx makes its sessions with the option on (``swag_onnx.runtime.SPINNING_STOP``): intra-op
workers spin between the ops of a run but go to sleep when it ends. With it off (onnxruntime's
default) the workers of one session keep spinning for a while after each run and slow the next
run of another session on the same cores, and explaining alternates two sessions on one model
(the plain model for predictions and scores, the augmented one for gradients).

Each setting runs in its own process (two settings in one process would disturb each other's
runs); the processes alternate for --rounds rounds, and each times, on the embedded default
model with default threads, batch 1:

  predict+explain   Explainer.predict then Explainer.explain(method="gradcam") on each of four
                    scikit-image photos (the two sessions alternate, as in an API loop);
  gradients         runner.gradients back to back (one session);
  scores            runner.scores back to back (one session).

It prints the median ms of each workload per setting and the ratio off / on.

    python tools/bench_spinning.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

WORKLOADS = ("predict+explain", "gradients", "scores")
REPEATS = 20  # timed calls per workload and process


def measure(stop: bool) -> dict[str, float]:
    """Median ms of each workload in this process, with SPINNING_STOP = stop."""
    from skimage import data

    from swag_onnx import Explainer, runtime

    runtime.SPINNING_STOP = stop
    explainer = Explainer()
    runner = explainer.runner
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    seed = np.zeros((1, runner.contract.num_classes), np.float32)
    calls = {"predict+explain": [lambda p=p: (explainer.predict([p]),
                                              explainer.explain([p], method="gradcam"))
                                 for p in photos],
             "gradients": [lambda: runner.gradients(x, seed)],
             "scores": [lambda: runner.scores(x)]}
    times = {name: [] for name in WORKLOADS}
    for name, fns in calls.items():
        for fn in fns:  # warm-up
            fn()
        time.sleep(0.2)  # the previous workload's threads settle
        while len(times[name]) < REPEATS:
            for fn in fns:
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(v)) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "on")))
        return
    results = {"on": [], "off": []}
    for _ in range(args.rounds):
        for setting in results:
            done = subprocess.run([sys.executable, __file__, "--child", setting],
                                  capture_output=True, text=True, check=True)
            results[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"default model, batch 1, default threads; median of {args.rounds} processes per "
          f"setting, each the median of {REPEATS} calls")
    print("| workload | spinning stop off, ms | on (swag_onnx), ms | off / on |\n|---|---:|---:|---:|")
    for name in WORKLOADS:
        off = float(np.median([r[name] for r in results["off"]]))
        on = float(np.median([r[name] for r in results["on"]]))
        print(f"| {name} | {off:.1f} | {on:.1f} | {off / on:.2f} |")


if __name__ == "__main__":
    main()
