"""`emoreason eval compare RUN_A RUN_B`: how B differs from A on the same samples, with paired bootstrap intervals.

For each metric of the task (sample level, and frame level where the samples carry per-frame labels): A's value,
B's value, B - A, and a 95 % percentile interval of B - A from 1000 paired bootstrap replicates (seed 0). A
replicate draws the samples with replacement and scores both runs on the same draw; at frame level it draws
whole videos, since the frames of a video are not independent. Both runs must answer the same data, split and task.
"""

from __future__ import annotations

import numpy as np

REPLICATES = 1000


def _metrics(rows, predictions: dict, task: str, labels: tuple[str, ...]) -> dict[str, float]:
    from eval.report import sample_metrics

    values, _ = sample_metrics(rows, predictions, task, labels)
    return {f"sample {k}": v for k, v in values.items() if isinstance(v, float)}


def _frame_scores(task: str, truth: np.ndarray, pred: np.ndarray, score: np.ndarray, n: int) -> dict[str, float]:
    from eval import metrics as m

    try:
        if task == "expr":
            return {"frame expr_macro_f1": m.expr_f1(truth, pred, n)[0]}
        if task == "au":
            return {"frame au_mean_f1": m.au_f1(truth, pred)[0]}
        if task == "va":
            return {"frame va": m.va_ccc(truth, pred)["va"]}
        valid = truth >= 0
        result = m.bah_scores(truth[valid], pred[valid], score[valid] if truth[valid].any() else None)
        return {f"frame {k}": v for k, v in result.items() if k in ("macro_f1", "ap_present")}
    except ValueError:  # a draw without a valid frame has no value
        return {}


def compare(rows, a: dict, b: dict, task: str, labels: tuple[str, ...], window: int = 1, seed: int = 0) -> dict:
    """{metric: {"a", "b", "delta", "delta_ci"}}."""
    from eval.report import frames_of

    rng = np.random.default_rng(seed)
    rows = list(rows)
    point_a, point_b = _metrics(rows, a, task, labels), _metrics(rows, b, task, labels)
    spans = []
    fa, fb = (frames_of(rows, p, task, labels, window) for p in (a, b))
    if fa is not None:
        point_a.update(_frame_scores(task, fa.truth, fa.pred, fa.score, len(labels)))
        point_b.update(_frame_scores(task, fb.truth, fb.pred, fb.score, len(labels)))
        videos = np.asarray(fa.videos)
        starts = np.flatnonzero(np.r_[True, videos[1:] != videos[:-1]])  # frames are sorted by video
        spans = list(zip(starts, np.r_[starts[1:], len(videos)], strict=True))
    deltas: dict[str, list[float]] = {k: [] for k in point_a}
    for _ in range(REPLICATES):
        draw = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        ra, rb = _metrics(draw, a, task, labels), _metrics(draw, b, task, labels)
        if spans:
            idx = np.concatenate([np.arange(*spans[i]) for i in rng.integers(0, len(spans), len(spans))])
            ra.update(_frame_scores(task, fa.truth[idx], fa.pred[idx], fa.score[idx], len(labels)))
            rb.update(_frame_scores(task, fb.truth[idx], fb.pred[idx], fb.score[idx], len(labels)))
        for key in deltas:
            if key in ra and key in rb:
                deltas[key].append(rb[key] - ra[key])
    out = {}
    for key in point_a:
        if key not in point_b:
            continue
        spread = np.array(deltas[key])
        interval = [float(np.percentile(spread, 2.5)), float(np.percentile(spread, 97.5))] if len(spread) else None
        out[key] = {"a": point_a[key], "b": point_b[key], "delta": point_b[key] - point_a[key], "delta_ci": interval}
    return out


def run(args) -> int:
    from eval.run import load_run, rows_and_predictions
    from mllm.labels import label_space

    settings = [load_run(args.run_a), load_run(args.run_b)]
    for key in ("data", "split", "task", "max_samples"):
        if settings[0].get(key) != settings[1].get(key):
            raise ValueError(f"{args.run_b}: answers {key}={settings[1].get(key)!r}, {args.run_a} answers "
                             f"{settings[0].get(key)!r}; compare runs on the same samples")  # fmt: skip
    s = settings[0]
    rows, space, a = rows_and_predictions(args.run_a, s, "compare")
    _, _, b = rows_and_predictions(args.run_b, settings[1], "compare", loaded=(rows, space))
    labels = label_space(space)
    result = compare(rows, a, b, s["task"], labels, args.smooth)
    print(f"B = {args.run_b} against A = {args.run_a} ({len(rows)} samples; 95% paired bootstrap intervals)")
    print("| metric | A | B | B - A | 95% CI |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key, r in result.items():
        ci = f"[{r['delta_ci'][0]:+.4f}, {r['delta_ci'][1]:+.4f}]" if r["delta_ci"] else "-"
        print(f"| {key} | {r['a']:.4f} | {r['b']:.4f} | {r['delta']:+.4f} | {ci} |")
    return 0
