"""Challenge prediction files: a run's ABAW file covers every frame of the list (filled from the nearest predicted
frame, counted) and round-trips through `eval score` to the run's own frame-level metric; bad files are refused
naming the line; BAH files pass the validator's checks and score like scikit-learn."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, f1_score, precision_score, recall_score

from data_builders.read import load_split
from eval.run import PREDICTIONS, RUN_FILE, Appender
from eval.submission import _probabilities, bah_threshold_ap, read_abaw, score_abaw, score_bah, write_bah
from mllm.labels import label_space

CLI = str(Path(sys.executable).parent / "emoreason")
LABELS = label_space("abaw_expr")


def _eval(*args):
    return subprocess.run([CLI, "eval", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_folder(abaw_expr_data, tmp_path):
    rows = sorted(load_split(abaw_expr_data, "validation", ["expr"]), key=lambda r: r["id"])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".emoreason-output").write_text("")
    settings = {"data": str(abaw_expr_data.resolve()), "split": "validation", "task": "expr", "model": "m",
                "adapter": None, "shard": "1/1", "max_new_tokens": 64, "max_samples": None}  # fmt: skip
    (folder / RUN_FILE).write_text(json.dumps(settings))
    appender = Appender(folder / PREDICTIONS)
    for i, row in enumerate(rows[:-1]):  # the last clip (vid1 frames 25-40) unanswered: frames 33-40 get filled
        label = row["expression"] if i % 2 == 0 else LABELS[(LABELS.index(row["expression"]) + 1) % 8]
        appender.write({"id": row["id"], "task": "expr", "ok": True, "label": label, "answer_logprob": -0.3,
                        "cited_aus": [], "think": ""})  # fmt: skip
    appender.close()
    return folder


def _annotations(abaw_expr_data) -> Path:
    return abaw_expr_data.parent / "tree" / "EXPR_Recognition_Challenge" / "Validation_Set"


def test_the_abaw_file_covers_every_frame_and_round_trips_to_the_runs_metric(run_folder, abaw_expr_data, tmp_path):
    out = tmp_path / "predictions.txt"
    done = _eval("submit", run_folder, "--frames-from", _annotations(abaw_expr_data), "--out", out)
    assert done.returncode == 0, done.stderr
    assert "rows 80" in done.stdout and "filled 0" in done.stdout  # frames 33-40 of vid1: the run's frames filled
    lines = out.read_text().splitlines()
    assert lines[0] == "image_location," + ",".join(LABELS)
    assert lines[1] == "vid0/00001.jpg," + lines[1].split(",")[1] and lines[80].startswith("vid1/00040.jpg,")
    scored = _eval("score", "--task", "abaw_expr", "--predictions", out, "--annotations", _annotations(abaw_expr_data))
    assert scored.returncode == 0, scored.stderr
    report = _eval("report", run_folder)
    assert report.returncode == 0, report.stderr
    run_metric = json.loads((run_folder / "metrics.json").read_text())["frame_level"]["expr_macro_f1"]
    assert json.loads(scored.stdout)["expr_macro_f1"] == pytest.approx(run_metric, abs=1e-12)


def test_a_sample_files_order_and_frames_are_followed_and_missing_ones_filled(run_folder, tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text("image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n"
                      + "".join(f"vid1/{i:05d}.jpg,\n" for i in range(1, 46))  # 5 frames past the annotations
                      + "".join(f"vid9/{i:05d}.jpg,\n" for i in range(1, 3))  # a video the run never saw
                      + "vid0/00002.jpg,\n")  # fmt: skip
    out = tmp_path / "test.txt"
    done = _eval("submit", run_folder, "--sample", sample, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "rows 48, filled 7, videos_without_prediction 1" in done.stdout
    read = read_abaw(out, "expr")
    assert list(read) == ["vid1", "vid9", "vid0"] and sorted(read["vid1"]) == list(range(1, 46))
    assert read["vid1"][45] == read["vid1"][40] and read["vid9"] == {1: 0, 2: 0}


def test_bad_files_are_refused_naming_the_line(abaw_expr_data, tmp_path):
    header = "image_location," + ",".join(LABELS) + "\n"
    bad = tmp_path / "bad.txt"
    for body, message in (("vid0/00001.jpg,9\n", ":2: expression: not a valid EXPR prediction"),
                          ("vid0/00001.jpg,1\nvid0/00001.jpg,2\n", ":3: image_location: vid0/00001.jpg appears twice"),
                          ("vid0/1.png,1\n", ":2: image_location: expected <video>/<frame>.jpg")):  # fmt: skip
        bad.write_text(header + body)
        with pytest.raises(ValueError, match=message):
            read_abaw(bad, "expr")
    bad.write_text("image,Neutral\n")
    with pytest.raises(ValueError, match=":1: header: must be"):
        read_abaw(bad, "expr")
    bad.write_text(header + "".join(f"vid0/{i:05d}.jpg,0\n" for i in range(1, 40)))
    with pytest.raises(ValueError, match="1 frames of vid0 have no line \\(first: vid0/00040.jpg\\)"):
        score_abaw("expr", bad, _annotations(abaw_expr_data))
    done = _eval("score", "--task", "abaw_expr", "--predictions", bad, "--annotations", _annotations(abaw_expr_data))
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_bah_probabilities_sum_exactly_to_one_and_the_file_scores_like_sklearn(tmp_path):
    for i in range(10001):
        p0, p1 = _probabilities(i / 10000)
        assert float(p0) + float(p1) == 1.0 and abs(float(p1) - i / 10000) <= 0.0002
    rng = np.random.default_rng(0)
    videos = [f"Videos/{i:05d}/Visite_1/q{i}.mp4" for i in range(80)]
    labels = (rng.random(80) < 0.4).astype(int)
    reference = tmp_path / "val.txt"
    reference.write_text("".join(f"{v},{y},well, I mean, maybe\n" for v, y in zip(videos, labels, strict=True)))
    p = np.clip(labels * 0.3 + rng.random(80) * 0.7, 0, 1)
    predicted = (p > 0.5).astype(int)
    out = tmp_path / "bah.txt"
    write_bah(out, videos, dict(zip(videos, p.tolist(), strict=True)),
              dict(zip(videos, predicted.tolist(), strict=True)))  # fmt: skip
    result = score_bah(out, reference)
    written = np.array([float(line.split(",")[2]) for line in out.read_text().splitlines()])
    assert result["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)
    assert result["ap_present"] == pytest.approx(average_precision_score(labels, written), abs=1e-12)
    precision = [precision_score(labels, written >= t, zero_division=0) for t in np.arange(0, 1, 0.001)]
    recall = [recall_score(labels, written >= t) for t in np.arange(0, 1, 0.001)]
    assert result["ap_present_thresholds"] == pytest.approx(auc(recall, precision), abs=1e-9)
    assert bah_threshold_ap(labels, written) == result["ap_present_thresholds"]
    out.write_text(out.read_text().replace(videos[3], videos[4], 1))
    with pytest.raises(ValueError, match="in its order"):
        score_bah(out, reference)
