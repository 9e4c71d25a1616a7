"""Evaluation benchmark: the time to map clip answers to frames and score them at ABAW's size, our path beside what
users run today (scikit-learn on frame arrays they built themselves), and clips per second end to end through
`emoreason eval run` on the tiny checkpoint.

    .venv/bin/python bench/eval.py [--frames 2700000] [--videos 540] [--clips 64] [--skip-inference]

Scoring: ABAW-sized synthetic EXPR annotations (2.7 million frames over 540 videos, about 3 % invalid, labels in
runs of a few seconds as real annotations are) cut into 16-frame clips every 16 frames (the last aligned to the
video's end, as `data build abaw` does), one answer per clip; timed: `eval.frames.map_to_frames` (votes, fill) and
`eval.metrics.expr_f1` on its output, beside scikit-learn's `f1_score` on the same frame arrays (the metric alone:
users today write the mapping themselves), and beside the per-frame Python mapping (a dict of votes per frame) this
project used before (`--skip-before` leaves it out). Memory: what the step added to the process's high-water mark
over what was resident before it (the rows themselves, about 1.2 GB of Python lists here, are not counted).

Inference: `emoreason eval run` over `--clips` ABAW clips of real face crops (aligned 112x112, 16 per clip, with a
speech track), the tiny checkpoint, fp32, a fresh face cache; clips per second over the command's wall time (the
engine's start, about 40 s here, included, and the scoring), frames per second = clips per second x 16.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLIP = 16


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mib() -> float:
    """The process's peak resident memory since the last `_reset_hwm` (Linux's VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak to what is resident now (Linux 4.0+)
        f.write("5")


def _timed(step):
    """(result, seconds, MiB the step added at its peak over what was resident before it)."""
    import gc

    gc.collect()
    _reset_hwm()
    before, started = _rss_mib(), time.perf_counter()
    result = step()
    return result, time.perf_counter() - started, max(0.0, _hwm_mib() - before)


def synthetic_rows(frames: int, videos: int, seed: int = 0) -> tuple[list[dict], dict]:
    """ABAW-like clips with per-frame EXPR labels, and one answer per clip (right about 60 % of the time)."""
    from mllm.labels import label_space

    labels = label_space("abaw_expr")
    rng = np.random.default_rng(seed)
    lengths = rng.multinomial(frames - videos * CLIP, np.ones(videos) / videos) + CLIP
    rows, predictions = [], {}
    for v, n in enumerate(lengths):
        runs = np.repeat(rng.integers(0, 8, n // 90 + 1), 90)[:n]  # a label every 3 s at 30 fps
        runs[rng.random(n) < 0.03] = -1
        starts = list(range(0, n - CLIP + 1, CLIP))
        if starts[-1] + CLIP < n:
            starts.append(n - CLIP)
        for s in starts:
            codes = runs[s : s + CLIP]
            sample = f"abaw/expr/validation/vid{v:04d}/{s + 1:05d}-{s + CLIP:05d}"
            rows.append({"id": sample, "subject": f"vid{v:04d}", "frame_indices": list(range(s + 1, s + CLIP + 1)),
                         "expression_frames": codes.tolist()})  # fmt: skip
            valid = codes[codes >= 0]
            truth = int(np.bincount(valid).argmax()) if len(valid) else 0
            answer = truth if rng.random() < 0.6 else int(rng.integers(0, 8))
            predictions[sample] = {"ok": True, "label": labels[answer], "answer_logprob": float(-rng.random())}
    return rows, predictions


def bench_scoring(frames: int, videos: int, with_before: bool = True) -> list[tuple[str, float, float, str]]:
    from sklearn.metrics import f1_score

    from eval.frames import map_to_frames
    from eval.metrics import expr_f1
    from mllm.labels import label_space

    rows, predictions = synthetic_rows(frames, videos)
    labels = label_space("abaw_expr")
    results = []
    mapped, seconds, added = _timed(lambda: map_to_frames(rows, predictions, "expr", labels))
    results.append(("map clip answers to frames (ours: arrays)", seconds, added,
                    f"{len(rows)} clips -> {mapped.counts['frames']} frames"))  # fmt: skip
    (ours, scored), seconds, added = _timed(lambda: expr_f1(mapped.truth, mapped.pred))
    results.append(("EXPR macro F1, eval.metrics", seconds, added, f"{ours:.6f}"))
    valid = mapped.truth != -1
    step = lambda: f1_score(mapped.truth[valid], mapped.pred[valid], labels=list(range(8)), average="macro",  # noqa: E731
                            zero_division=0)  # fmt: skip
    theirs, seconds, added = _timed(step)
    results.append(("EXPR macro F1, scikit-learn", seconds, added, f"{theirs:.6f}"))
    assert abs(ours - theirs) < 1e-12 and scored == int(valid.sum())
    if with_before:  # the per-frame Python mapping this project used until it moved to arrays (the tests' oracle)
        sys.path.insert(0, str(REPO / "tests" / "eval"))
        from test_frames import _reference_map_to_frames

        before, seconds, added = _timed(lambda: _reference_map_to_frames(rows, predictions, "expr", labels))
        same = np.array_equal(before.pred, mapped.pred) and np.array_equal(before.truth, mapped.truth)
        results.append(("map clip answers to frames (before: a dict per frame)", seconds, added,
                        "same frames and predictions" if same else "DIFFERENT"))  # fmt: skip
    return results


def bench_inference(clips: int, work: Path) -> dict:
    """`emoreason eval run` over `clips` clips of an ABAW tree of real face crops."""
    from mllm.cli import main as emoreason
    from mllm.face import DetectorSettings, FaceDetector, align_face
    from mllm.samples import synthetic
    from mllm.samples.tiny import make_tiny

    model = make_tiny(work / "tiny")
    detector = FaceDetector(DetectorSettings(min_face_fraction=0.0))
    faces = [align_face(f, detector.detect(f)[0].landmarks_68, size=112).crop for f in synthetic.face_frames(8)]
    frames = clips * CLIP
    clip = synthetic.write_video(work / "clip.mp4", synthetic.face_frames(frames, size=(96, 128)), fps=30.0,
                                 audio=synthetic.speech_or_tone("Well, I suppose so.", frames / 30.0))  # fmt: skip
    root = work / "abaw"
    header = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    ann = root / "EXPR_Recognition_Challenge" / "Validation_Set" / "vid0.txt"
    ann.parent.mkdir(parents=True)
    ann.write_text(header + "\n" + "\n".join(str((i // 90) % 7) for i in range(frames)) + "\n")
    (root / "cropped_aligned" / "vid0").mkdir(parents=True)
    for i in range(frames):
        synthetic.write_image(root / "cropped_aligned" / "vid0" / f"{i + 1:05d}.jpg", faces[i % len(faces)])
    (root / "videos").mkdir()
    shutil.copyfile(clip, root / "videos" / "vid0.mp4")
    if emoreason(["data", "build", "abaw", "--root", str(root), "--out", str(work / "data")]) != 0:
        raise SystemExit("data build failed")
    env = {**os.environ, "EMOREASON_CACHE": str(work / "cache"), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cli = str(Path(sys.executable).parent / "emoreason")
    started = time.perf_counter()
    subprocess.run([cli, "eval", "run", "--data", str(work / "data"), "--model", str(model), "--split",
                    "validation", "--out", str(work / "run"), "--dtype", "float32", "--max-new-tokens", "64"],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (work / "run" / "predictions.jsonl").read_text().splitlines()]
    return {"clips": len(records), "wall_s": wall, "parsed": sum(r["ok"] for r in records)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2_700_000)
    parser.add_argument("--videos", type=int, default=540)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-before", action="store_true", help="not the per-frame mapping of before (34 s)")
    args = parser.parse_args(argv)
    print(f"scoring {args.frames} frames over {args.videos} videos", file=sys.stderr, flush=True)
    scoring = bench_scoring(args.frames, args.videos, with_before=not args.skip_before)
    print("| step | seconds | MiB added at peak | result |")
    print("| --- | ---: | ---: | --- |")
    for name, seconds, peak, note in scoring:
        print(f"| {name} | {seconds:.2f} | {peak:.0f} | {note} |")
    if not args.skip_inference:
        with tempfile.TemporaryDirectory() as tmp:
            r = bench_inference(args.clips, Path(tmp))
        print(f"\neval run, tiny checkpoint, {r['clips']} clips of {CLIP} frames: {r['wall_s']:.1f} s wall "
              f"(engine start included), {r['clips'] / r['wall_s']:.2f} clips/s end to end, "
              f"{r['clips'] * CLIP / r['wall_s']:.1f} frames/s; {r['parsed']} answers parsed")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
