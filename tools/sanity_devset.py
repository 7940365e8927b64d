"""The instrument's sanity check on the offline dev set (tools/eval_devset.py's photos).

Runs ``swag_onnx.evaluate.evaluate`` with the default model on the first ``--limit`` photos
(default 20), the fast methods (gradcam, gradcam++, swag, gradient, integrated-gradients) and the
control maps, and the metrics road, insertion and mprt, into ``--out`` (default
./devset-sanity; a rerun resumes). Then prints, for each metric row, the mean of every method
and whether the random control is worse than every real method (a metric on which it is not
cannot tell a faithful map from noise on this model), and Grad-CAM's mean MPRT Spearman at full
randomisation (Adebayo et al. 2018 report a correlation near 0 for Grad-CAM: expected < 0.5).
Exit status 0 when every check holds, 1 otherwise.

    python tools/sanity_devset.py                           # 20 photos (long: ~1 h on 2 cores)
    python tools/sanity_devset.py --limit 3 --out /tmp/sanity
    python tools/sanity_devset.py --steps 64 --step 224     # method/protocol options by name

Defaults chosen for time, each an option: integrated-gradients --steps 16, insertion --step 896
(57 points per curve instead of 225).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_devset import write_photos  # noqa: E402

METHODS = ("gradcam", "gradcam++", "swag", "gradient", "integrated-gradients")
METRICS = ("road", "insertion", "mprt")
CHECKED_ROWS = ("road", "insertion", "mprt")  # the rows the random control must lose on
MPRT_LIMIT = 0.5


def means(rows: list[dict]) -> dict[tuple[str, str], tuple[float, int]]:
    """{(method, metric row): (mean over images of the finite values, their count)}."""
    values: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        values.setdefault((r["method"], r["metric"]), []).append(float(r["value"]))
    found = {}
    for key, v in values.items():
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        found[key] = (float(v.mean()) if v.size else float("nan"), int(v.size))
    return found


def random_is_worst(table: dict, row: str, methods: list[str], higher_is_better: bool) -> bool:
    """The random control's mean on `row` is strictly worse than every real method's."""
    control = table[("random", row)][0]
    real = [table[(m, row)][0] for m in methods]
    return all(control < v if higher_is_better else control > v for v in real)


def report(table: dict, methods: list[str], rows: list[str]) -> bool:
    """Print the means and checks; True when every check holds."""
    from swag_onnx.metrics.registry import rows_info

    info = rows_info()
    ok = True
    columns = [*methods, "random", "center"]
    print("row".ljust(12) + "".join(m[:14].rjust(15) for m in columns))
    for row in rows:
        print(row.ljust(12) + "".join(f"{table.get((m, row), (float('nan'),))[0]:15.4f}"
                                      for m in columns))
    for row in CHECKED_ROWS:
        if row in rows:
            better = "higher" if info[row].higher_is_better else "lower"
            holds = random_is_worst(table, row, methods, info[row].higher_is_better)
            ok &= holds
            print(f"{row}: random control worse than every real method ({better} is better): "
                  f"{'yes' if holds else 'NO'}")
    if ("gradcam", "mprt") in table:
        value, count = table[("gradcam", "mprt")]
        holds = value < MPRT_LIMIT
        ok &= holds
        print(f"Grad-CAM mean MPRT Spearman at full randomisation: {value:.4f} over {count} "
              f"images (< {MPRT_LIMIT}: {'yes' if holds else 'NO'})")
    return ok


def main(argv=None) -> int:
    from swag_onnx.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None,
                        help="where the photos are written (default: OUT/photos)")
    parser.add_argument("--out", type=Path, default=Path("devset-sanity"))
    parser.add_argument("--limit", type=int, default=20, help="the first N photos (default 20)")
    parser.add_argument("--method", action="append", help=f"default: {', '.join(METHODS)}")
    parser.add_argument("--metric", action="append", help=f"default: {', '.join(METRICS)}")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients path steps")
    parser.add_argument("--step", type=int, default=896, help="insertion: pixels per step")
    args = parser.parse_args(argv)
    args.images = args.images or args.out / "photos"
    paths = write_photos(args.images, args.limit)
    print(f"{len(paths)} photos in {args.images}/", file=sys.stderr)
    methods = args.method or list(METHODS)
    options = {"step": args.step}
    if "integrated-gradients" in methods:
        options["steps"] = args.steps

    def progress(done: int, total: int, name: str) -> None:
        print(f"\r{done}/{total} {name}".ljust(60), end="", file=sys.stderr, flush=True)

    result = evaluate(paths, methods, args.metric or list(METRICS), args.out, progress=progress,
                      **options)
    print(file=sys.stderr)
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0 if report(means(result.report.rows), result.methods[:len(methods)],
                       result.metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
