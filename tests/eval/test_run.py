"""`emoreason eval run` end to end on an ABAW fixture with the tiny checkpoint (a killed run resumes with nothing
lost or duplicated, and every report file is written), `eval merge` of shards, and the refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from eval.run import PREDICTIONS, RUN_FILE, Appender, answer_logprob, read_predictions
from mllm.labels import label_space
from tests.eval.conftest import expr_codes

CLI = str(Path(sys.executable).parent / "emoreason")
LABELS = label_space("abaw_expr")


def _eval(*args, **kwargs):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.run([CLI, "eval", *map(str, args)], capture_output=True, text=True, env=env, **kwargs)


def _run_args(data, model, out, *extra):
    return ["run", "--data", data, "--model", model, "--split", "validation", "--task", "expr", "--out", out,
            "--dtype", "float32", "--enforce-eager", "--max-new-tokens", "64", *extra]  # fmt: skip


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    return Path(shutil.copytree(tiny_dir / "emoreason", tmp_path / "model", ignore=shutil.ignore_patterns("served")))


def _expected_frame_f1(predictions: dict) -> float:
    """Independently: each annotated frame gets the label of the more probable of the clips covering it (ABAW's
    clips here: 1-16, 17-32, 25-40), then scikit-learn's macro F1 over the 8 classes on the valid frames."""
    true, pred = [], []
    for v in range(2):
        clips = {(1, 16): None, (17, 32): None, (25, 40): None}
        for a, b in clips:
            record = predictions[f"abaw/expr/validation/vid{v}/{a:05d}-{b:05d}"]
            clips[(a, b)] = (LABELS.index(record["label"]), record["answer_logprob"])
        for frame, code in enumerate(expr_codes(v), start=1):
            covering = [value for (a, b), value in clips.items() if a <= frame <= b]
            label = max(covering, key=lambda x: (x[1], -x[0]))[0]  # ties in probability: the smaller class
            if code != -1:
                true.append(code)
                pred.append(label)
    return f1_score(true, pred, labels=list(range(8)), average="macro", zero_division=0)


@pytest.mark.slow  # two vLLM starts (about 40 s each)
def test_a_killed_run_resumes_and_writes_every_report_file(abaw_expr_data, model_copy, tmp_path):
    out = tmp_path / "run"
    cmd = [CLI, "eval", *map(str, _run_args(abaw_expr_data, model_copy, out, "--concurrency", "1"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / PREDICTIONS).exists() and (out / PREDICTIONS).read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and vLLM's processes
    proc.wait()
    before = read_predictions(out / PREDICTIONS)
    assert 2 <= len(before) < 6, "the run finished before it could be killed"

    annotations = abaw_expr_data.parent / "tree" / "EXPR_Recognition_Challenge" / "Validation_Set"
    submission = tmp_path / "predictions.txt"
    done = _eval(*_run_args(abaw_expr_data, model_copy, out, "--submission", submission, "--frames-from", annotations),
                 timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(before)} answered before, {6 - len(before)} to go" in done.stderr
    lines = (out / PREDICTIONS).read_text().splitlines()
    after = read_predictions(out / PREDICTIONS)
    assert len(lines) == len(after) == 6  # nothing lost, nothing twice
    assert all(after[k] == v for k, v in before.items())  # what was answered before the kill is kept as it was
    assert all(r["ok"] and r["label"] in LABELS and r["answer_logprob"] < 0 for r in after.values())

    for name in ("metrics.json", "report.md", "confusion_matrix.png", "per_class_f1.png", "timelines.png", RUN_FILE):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    frame = metrics["frame_level"]
    assert frame["frames"] == 80 and frame["frames_scored"] == 74 and frame["filled"] == 0
    assert frame["expr_macro_f1"] == pytest.approx(_expected_frame_f1(after), abs=1e-12)
    assert metrics["sample_level"]["samples"] == 6 and metrics["parse_failures"] == 0
    assert not [p for p in out.iterdir() if ".emoreason-tmp-" in p.name]
    # The same command wrote the challenge file, which scores exactly the run's frame-level F1.
    assert len(submission.read_text().splitlines()) == 1 + 80
    scored = _eval("score", "--task", "abaw_expr", "--predictions", submission, "--annotations", annotations)
    assert json.loads(scored.stdout)["expr_macro_f1"] == pytest.approx(frame["expr_macro_f1"], abs=1e-12)


def test_a_run_folder_of_other_settings_and_a_model_of_another_label_space_are_refused(abaw_expr_data, model_copy,
                                                                                       tmp_path):  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    settings = {"data": str(abaw_expr_data.resolve()), "split": "train"}
    (out / ".emoreason-output").write_text("")
    (out / RUN_FILE).write_text(json.dumps(settings))
    done = _eval(*_run_args(abaw_expr_data, model_copy, out), timeout=120)
    assert done.returncode == 1 and "holds a run with split='train', not 'validation'" in done.stderr
    assert "Traceback" not in done.stderr
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "label_space": "basic7"}))
    done = _eval(*_run_args(abaw_expr_data, model_copy, tmp_path / "new"), timeout=120)
    assert done.returncode == 1 and "label space 'basic7'" in done.stderr and "'abaw_expr'" in done.stderr
    assert not (tmp_path / "new").exists()


def _fake_shard(folder: Path, data: Path, part: int, ids: list[str]) -> None:
    folder.mkdir()
    (folder / ".emoreason-output").write_text("")
    settings = {"data": str(data.resolve()), "split": "validation", "task": "expr", "model": "m", "adapter": None,
                "shard": f"{part}/2", "max_new_tokens": 64, "max_samples": None}  # fmt: skip
    (folder / RUN_FILE).write_text(json.dumps(settings))
    appender = Appender(folder / PREDICTIONS)
    for i, sample in enumerate(ids):
        appender.write({"id": sample, "task": "expr", "ok": True, "label": LABELS[i % 3], "answer_logprob": -0.5,
                        "cited_aus": [], "think": ""})  # fmt: skip
    appender.close()


def test_merge_joins_shards_and_scores_them(abaw_expr_data, tmp_path):
    from data_builders.read import load_split

    ids = sorted(load_split(abaw_expr_data, "validation", ["expr"])["id"])
    _fake_shard(tmp_path / "s1", abaw_expr_data, 1, ids[0::2])
    _fake_shard(tmp_path / "s2", abaw_expr_data, 2, ids[1::2])
    done = _eval("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "all", timeout=120)
    assert done.returncode == 0, done.stderr
    merged = read_predictions(tmp_path / "all" / PREDICTIONS)
    assert sorted(merged) == ids
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["answered"] == 6 and metrics["frame_level"]["frames_scored"] == 74
    for name in ("report.md", "confusion_matrix.png", "per_class_f1.png", "timelines.png"):
        assert (tmp_path / "all" / name).is_file(), name
    again = _eval("merge", tmp_path / "s1", tmp_path / "s1", "--out", tmp_path / "twice", timeout=120)
    assert again.returncode == 1 and "given twice" in again.stderr


def test_a_torn_last_line_is_dropped_and_a_damaged_one_named(tmp_path):
    path = tmp_path / PREDICTIONS
    path.write_text('{"id": "a", "ok": true}\n{"id": "b", "ok"')
    assert list(read_predictions(path, repair=True)) == ["a"]
    assert path.read_text() == '{"id": "a", "ok": true}\n'
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match=f"{PREDICTIONS}:2: not JSON"):
        read_predictions(path)
    path.write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(ValueError, match=':2: id: "a" appears twice \\(first at line 1\\)'):
        read_predictions(path)
    path.write_text('{"id": "a", "ok": true}\n{"id": "b", "ok": true}')  # a whole last line without its newline
    assert list(read_predictions(path, repair=True)) == ["a", "b"]
    assert path.read_text().endswith("}\n")


def test_answer_logprob_sums_the_answer_tokens_only():
    pieces = [("<think>", [-1.0]), ("x", [-2.0]), ("</think>", [-0.5]), ("<answer>", [-0.1]), ("Fe", [-0.2]),
              ("ar", [-0.3]), ("</answer>", [-0.01])]  # fmt: skip
    assert answer_logprob(pieces) == pytest.approx(-0.5)
    assert answer_logprob([("<think>", None)]) is None
    assert np.isclose(answer_logprob(pieces[:6]), -0.5)


def test_a_sample_whose_media_cannot_be_read_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    """answer_rows with a stand-in engine: the unreadable sample gets a line saying why, the others their answers."""
    import asyncio

    from eval.run import answer_rows
    from serve.engine import Delta, RequestError, parsed_result

    class Engine:
        def sampling_params(self, task, max_tokens, **kw):
            return None

        async def stream(self, messages, **kw):
            if "broken" in messages[0]["content"][0]["video"]:
                raise RequestError("/data/broken\x1b[2J.mp4: truncated video")  # a hostile file name
            for piece in ("<think>x</think>", "<answer>", "Fear", "</answer>"):
                yield Delta(piece, [1], None, [-0.25])

        def parse(self, text, task, model=None):
            return parsed_result(text, task, "abaw_expr")

    rows = [{"id": f"s{i}", "prompt": json.dumps([{"role": "user", "content": [
        {"type": "video", "video": f"/data/{'broken' if i == 1 else 'ok'}.mp4"}, {"type": "text", "text": "?"}]}])}
        for i in range(3)]  # fmt: skip
    appender = Appender(tmp_path / PREDICTIONS)
    asyncio.run(answer_rows(Engine(), rows, "expr", None, 64, appender, concurrency=2))
    appender.close()
    records = read_predictions(tmp_path / PREDICTIONS)
    assert sorted(records) == ["s0", "s1", "s2"]
    assert records["s1"]["ok"] is False and records["s1"]["error"] == "unreadable_media"
    assert "truncated video" in records["s1"]["message"]
    assert records["s0"]["label"] == records["s2"]["label"] == "Fear" and records["s0"]["answer_logprob"] == -0.25
    err = capsys.readouterr().err
    assert "1 samples could not be read" in err and "broken\\x1b[2J.mp4" in err and "\x1b" not in err
