"""`emoreason data faces`: the face cache filled for a built dataset in parallel processes, under the keys the
collator then reads (no face is tracked twice), in shards that split the work, resumable after SIGKILL, with bad
input refused in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIPS = 6


@pytest.fixture(scope="module")
def dfew_data(tmp_path_factory):
    """A DFEW-layout dataset of 6 camera-like clips of a real face (1 s each), built by `data build dfew`."""
    from mllm.cli import main as emoreason
    from mllm.samples.synthetic import write_camera_video

    root = tmp_path_factory.mktemp("dfew-faces") / "dfew"
    (root / "Clip" / "original").mkdir(parents=True)
    for i in range(CLIPS):
        write_camera_video(root / "Clip" / "original" / f"{i + 1:05d}.mp4", n=25, size=(180, 320), seed=i)
    for fold in range(1, 6):
        for part, rows in (("train", "".join(f"{i + 1},{1 + i % 7}\n" for i in range(CLIPS))), ("test", "")):
            folder = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"set_{fold}.csv").write_text("video_name,label\n" + rows)
    out = root.parent / "data"
    assert emoreason(["data", "build", "dfew", "--root", str(root), "--out", str(out), "--split", "fold1_train"]) == 0
    return out


def _faces(data, model, cache, *extra, wait=True):
    cmd = [sys.executable, "-m", "mllm.cli", "data", "faces", str(data), "--model", str(model), *map(str, extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMOREASON_CACHE": str(cache)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _ledgers(cache: Path) -> list[Path]:
    return sorted((cache / "faces" / "prepared").glob("*.done"))


def test_two_workers_fill_the_cache_the_collator_then_reads_without_tracking(tiny_dir, dfew_data, tmp_path):
    from datasets import load_from_disk

    from mllm.face import FaceCache
    from mllm.processor import EmoReasonProcessor

    cache = tmp_path / "cache"
    code, _, err = _faces(dfew_data, tiny_dir / "emoreason", cache, "--workers", 2)
    assert code == 0, err[-3000:]
    assert f"{CLIPS} samples in shard 0/1, 0 done before" in err and "frames/s on 2 workers" in err
    assert "2 workers (fork: models loaded once, shared)" in err  # started in milliseconds, not seconds
    assert f"face cache 0 hits, {CLIPS} computed; 0 failed" in err
    # The trainer's collator renders the same prompts with the same processor: every track is found in the cache.
    processor = EmoReasonProcessor.from_pretrained(tiny_dir / "emoreason")
    processor.face_cache = store = FaceCache(cache / "faces")
    rows = load_from_disk(str(dfew_data))["fold1_train"]
    for prompt in rows["prompt"]:
        processor([json.loads(prompt)])
    assert (store.hits, store.misses) == (CLIPS, 0)
    assert not list((cache / "faces").rglob("*.tmp"))
    # A second run has nothing left to do.
    code, _, err = _faces(dfew_data, tiny_dir / "emoreason", cache, "--workers", 2)
    assert code == 0 and f"{CLIPS} done before; 0 to go" in err, err[-2000:]


def test_shards_split_the_samples_and_a_killed_run_redoes_only_what_it_had_not_finished(tiny_dir, dfew_data,
                                                                                          tmp_path):  # fmt: skip
    model = tiny_dir / "emoreason"
    shards = tmp_path / "shards"
    for index in (0, 1):
        code, _, err = _faces(dfew_data, model, shards, "--workers", 1, "--shard", f"{index}/2")
        assert code == 0 and f"{CLIPS // 2} samples in shard {index}/2" in err, err[-2000:]
    done = [set(p.read_text().split()) for p in _ledgers(shards)]
    assert len(done) == 2 and not done[0] & done[1] and len(done[0] | done[1]) == CLIPS

    cache = tmp_path / "killed"
    proc = _faces(dfew_data, model, cache, "--workers", 1, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (_ledgers(cache) and _ledgers(cache)[0].read_text().strip()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = set(_ledgers(cache)[0].read_text().split())
    assert 1 <= len(finished) < CLIPS
    code, _, err = _faces(dfew_data, model, cache, "--workers", 1)
    assert code == 0 and f"{len(finished)} done before; {CLIPS - len(finished)} to go" in err, err[-2000:]
    assert set(_ledgers(cache)[0].read_text().split()) == set(_ids(dfew_data))  # each recorded once done
    assert not list((cache / "faces").rglob("*.tmp"))


def _ids(data):
    from datasets import load_from_disk

    return load_from_disk(str(data))["fold1_train"]["id"]


def test_bad_input_is_one_line_and_a_sample_with_broken_media_is_named(tiny_dir, dfew_data, tmp_path):
    model = tiny_dir / "emoreason"
    for extra, message in (
        (["--shard", "2/2"], "--shard: give I/N with 0 <= I < N"),
        (["--workers", "0"], "--workers: between 1 and 256"),
        (["--split", "fold9_test"], "no split 'fold9_test'"),
    ):
        code, _, err = _faces(dfew_data, model, tmp_path / "c", *extra)
        assert code != 0 and message in err and "Traceback" not in err, err[-2000:]
    code, _, err = _faces(tmp_path, model, tmp_path / "c")
    assert code != 0 and "not a dataset folder" in err and "Traceback" not in err
    # one clip broken after the build: that sample is named with the reason, the others are done, exit 1
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dfew_data.parent / "dfew", root / "dfew")
    from mllm.cli import main as emoreason

    assert emoreason(["data", "build", "dfew", "--root", str(root / "dfew"), "--out", str(root / "data"), "--split",
                      "fold1_train"]) == 0  # fmt: skip
    (root / "dfew" / "Clip" / "original" / "00002.mp4").write_bytes(b"not a video")
    code, _, err = _faces(root / "data", model, tmp_path / "c2")
    assert code == 1 and "00002" in err and f"{CLIPS - 1} samples" in err and "1 failed" in err, err[-2000:]


def test_workers_are_forked_with_the_models_loaded_only_while_no_other_thread_runs():
    """A fork copies only the calling thread (a lock another thread holds would stay held in the worker), so the
    workers are forked, sharing the models the command loaded once, only when the command runs no other thread."""
    import threading

    from data_builders.faces import _start_method

    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert _start_method() == "spawn"
    finally:
        release.set()
        other.join()
    code = "from data_builders.faces import _start_method as m; print(m())"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    alone = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert alone.stdout.strip() == "fork", alone.stderr[-2000:]
