"""Limits bound memory, not only time: each case runs in a fresh process under an address-space limit
(`RLIMIT_AS`) a fixed budget above what the process already uses, so a decoder that holds what it should not
fails here with MemoryError instead of passing on a large machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mllm.samples import synthetic

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

MB = 1024**2
REPO = Path(__file__).resolve().parents[2]

# The child warms up (imports, codecs, decoder threads) on a small clip, then limits its address space to what it
# uses plus BUDGET and runs CALL. One malloc arena: glibc reserves 64 MB of address space per extra arena.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from mllm.media import MediaError, MediaLimits, load_video

def vm_bytes():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))

load_video(sys.argv[2], num_frames=2)
budget = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + budget, resource.RLIM_INFINITY))
started = time.perf_counter()
try:
    video = eval(sys.argv[4])
    result = {"ok": True, "frames": list(video.frames.shape)}
except MemoryError as exc:
    result = {"ok": False, "error": "MemoryError", "message": str(exc)}
except MediaError as exc:
    result = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
result["seconds"] = time.perf_counter() - started
print(json.dumps(result))
"""


def run_limited(call: str, path: Path, warm: Path, budget: int) -> dict:
    env = {"MALLOC_ARENA_MAX": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, str(REPO), str(warm), str(budget), call.replace("PATH", repr(str(path)))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"ok": False, "error": f"exit {done.returncode}", "message": done.stderr[-2000:]}
    return json.loads(lines[-1])


def _repeat_keyframe(path: Path, codec: str, size: tuple[int, int], count: int, rate: int, **options) -> Path:
    """A video of `count` copies of one encoded keyframe: as long as wanted, encoded in a fraction of a second."""
    height, width = size
    with av.open(str(path), "w", **options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yuv = np.full((height * 3 // 2, width), 128, np.uint8)
        yuv[:height] = 40
        packets = list(stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p"))) + list(stream.encode())
        keyframe = bytes(packets[0])
        for i in range(count):
            packet = av.Packet(keyframe)
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base, packet.is_keyframe = Fraction(1, rate), True
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    warm = synthetic.write_video(folder / "warm.webm", synthetic.face_frames(10, size=(120, 160)), fps=10)
    # 12000x12000, two frames: under 1 MB on disk, 216 MB per decoded frame and more per decoder thread.
    huge = _repeat_keyframe(folder / "huge.mp4", "libx264", (12000, 12000), 2, 1)
    # 60 s of 640x360 webm written as a browser's MediaRecorder writes it (live: no duration, no index).
    live = _repeat_keyframe(folder / "recorded.webm", "libvpx", (360, 640), 25 * 60, 25, options={"live": "1"})
    return {"warm": warm, "huge": huge, "live": live}


def test_huge_video_frames_are_refused_from_the_declared_size(clips):
    assert clips["huge"].stat().st_size < 1 * MB
    result = run_limited("load_video(PATH, num_frames=8)", clips["huge"], clips["warm"], budget=2560 * MB)
    assert result["error"] == "MediaTooLargeError", result
    assert "huge.mp4: 12000x12000 video frames are over the limit" in result["message"]
    assert result["seconds"] < 10


def test_sampling_a_long_recording_holds_only_the_sampled_frames(clips):
    budget = 160 * MB
    every_frame_yuv = 25 * 60 * 640 * 360 * 3 // 2
    assert every_frame_yuv > 3 * budget  # keeping every decoded frame could not fit
    result = run_limited("load_video(PATH, num_frames=8)", clips["live"], clips["warm"], budget=budget)
    assert result == {"ok": True, "frames": [8, 360, 640, 3], "seconds": result["seconds"]}, result
    # The control: every frame of the same clip does not fit in the same budget.
    control = run_limited("load_video(PATH)", clips["live"], clips["warm"], budget=budget)
    assert not control["ok"], control


def test_decoded_bytes_limit_refuses_before_decoding(clips):
    result = run_limited(
        "load_video(PATH, limits=MediaLimits(max_decoded_bytes=100 * 1024**2))",
        clips["live"],
        clips["warm"],
        budget=160 * MB,
    )
    assert result["error"] == "MediaTooLargeError", result
    assert "recorded.webm: 1500 frames of 640x360" in result["message"]
    assert result["seconds"] < 5
