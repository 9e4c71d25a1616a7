"""Bad conversations: every malformed message or content part is refused with one error (a ValueError or a
MediaError) naming the conversation, message and part, and the file; unambiguous inputs are converted as
documented and reach the model as finite embeddings."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from PIL import Image

from mllm.media import (
    CorruptMediaError,
    MediaArrayError,
    MediaError,
    MediaNotFoundError,
    MediaTooShortError,
    UnsupportedMediaError,
)
from mllm.processor import ProcessorInputError
from mllm.samples import synthetic
from tests.reliability.conftest import assert_refused

ASK = {"type": "text", "text": "Which emotion?"}
HERE = "conversation 0, message 0"
# Where a refusal's message starts: the batch, the conversation, the message, or the content part.
B, C, M, P = "", "conversation 0: ", f"{HERE}: ", f"{HERE}, content part 0"


def user(*parts):
    return [{"role": "user", "content": [*parts, ASK]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory, video_without_audio, text_as_mp4):
    folder = tmp_path_factory.mktemp("bad_parts")
    blip = synthetic.write_audio(folder / "blip.wav", synthetic.tone(440, 0.019))
    voice = synthetic.write_audio(folder / "voice.wav", synthetic.tone(440, 3.0))
    cut = folder / "cut.wav"
    cut.write_bytes(voice.read_bytes()[: voice.stat().st_size // 2])
    crop = synthetic.write_image(folder / "00001.jpg", synthetic.astronaut()[60:260, 150:350])
    return {"blip": blip, "cut": cut, "video": video_without_audio, "notes": text_as_mp4, "crop": crop}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def one(part: dict) -> list:
    """A batch of one user message holding `part` and a question."""
    return [user(part)]


class F(str):
    """Names one of the module's files (made once), so that the table stays one line a case."""


def vid(**keys) -> list:
    return one({"type": "video", "video": F("video"), **keys})


def _resolve(value, files):
    if isinstance(value, F):
        return str(files[value])
    if isinstance(value, list):
        return [_resolve(v, files) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, files) for k, v in value.items()}
    return value


NAN_IMAGE, NAN_AUDIO = np.full((8, 8, 3), np.nan), np.full(16000, np.nan, np.float32)
WIN = ProcessorInputError  # most refusals are about the request's shape, not a file

# (id, batch, error type, text in the message, where the message starts)
CASES = [
    # The batch and its messages
    ("batch is a string", "hello", WIN, "conversations must be a list", B),
    ("batch is a dict", {"role": "user", "content": "hi"}, WIN, "got dict", B),
    ("no conversations", [], WIN, "no conversations", B),
    ("empty conversation", [[]], WIN, "a conversation is a non-empty list", C),
    ("message is a string", [["hello"]], WIN, "a message must be a dict", M),
    ("no role", [[{"content": "hi"}]], WIN, "no 'role'", M),
    ("unknown role", [[{"role": "tool", "content": "hi"}]], WIN, "role 'tool'", M),
    ("None content", [[{"role": "user", "content": None}]], WIN, "content of type NoneType", M),
    ("no content", [[{"role": "user"}]], WIN, "no 'content'", M),
    ("extra message key", [[{"role": "user", "content": "x", "name": "a"}]], WIN, "['name']", M),
    ("placeholder in content", [[{"role": "user", "content": "<IMG_CONTEXT>"}]], WIN, "placeholder", M),
    # Content parts
    ("part is a string", [[{"role": "user", "content": ["hi"]}]], WIN, "got 'hi'", P),
    ("part is None", [[{"role": "user", "content": [None]}]], WIN, "must be a dict", P),
    ("no type", one({"image": "x.png"}), WIN, "unknown content part type None", P),
    ("unknown type", one({"type": "pdf", "pdf": "x"}), WIN, "type 'pdf'; valid", P),
    ("text None", one({"type": "text", "text": None}), WIN, "'text' as a string", P),
    ("placeholder in text", one({"type": "text", "text": "<audio>"}), WIN, "placeholder", P),
    ("unknown key", vid(fps=2), WIN, "['fps']", P),
    ("image_url {}", one({"type": "image_url", "image_url": {}}), WIN, "has no 'url'", P),
    ("image_url 5", one({"type": "image_url", "image_url": 5}), WIN, "got int", P),
    ("http URL", one({"type": "image_url", "image_url": "http://x.invalid/a.png"}), WIN, "only local", P),
    ("data URL not base64", one({"type": "image", "image": "data:image/png,abc"}), WIN, "base64", P),
    ("bad base64", one({"type": "image", "image": "data:image/png;base64,@@@"}), WIN, "malformed", P),
    ("remote file URL", one({"type": "image", "image": "file://host/a.png"}), WIN, "host 'host'", P),
    ("two sources", one({"type": "image", "image": "a.png", "image_url": "b.png"}), WIN, "not several", P),
    ("no source", one({"type": "image"}), WIN, "no 'image' or 'image_url' field", P),
    ("image None", one({"type": "image", "image": None}), WIN, "got NoneType", P),
    ("image empty path", one({"type": "image", "image": ""}), WIN, "names no media", P),
    (
        "media in assistant",
        [[{"role": "assistant", "content": [{"type": "audio", "audio": "a.wav"}]}]],
        WIN,
        "user",
        P,
    ),
    ("video array", one({"type": "video", "video": np.zeros((2, 8, 8, 3), np.uint8)}), WIN, "got ndarray", P),
    ("input_audio not dict", one({"type": "input_audio", "input_audio": "abc"}), WIN, "input_audio must be", P),
    ("input_audio bad base64", one({"type": "input_audio", "input_audio": {"data": "@@"}}), WIN, "base64", P),
    # In-memory media
    ("image NaN", one({"type": "image", "image": NAN_IMAGE}), MediaArrayError, "<array>: image array holds NaN", P),
    ("image 0-255 floats", one({"type": "image", "image": np.full((8, 8, 3), 200.0)}), MediaArrayError, "[0, 1]", P),
    ("image (3, H, W)", one({"type": "image", "image": np.zeros((3, 8, 8), np.uint8)}), MediaArrayError, "last", P),
    ("audio 19 ms", one({"type": "audio", "audio": synthetic.tone(440, 0.019)}), MediaTooShortError, "19 ms", P),
    ("audio NaN", one({"type": "audio", "audio": NAN_AUDIO}), MediaArrayError, "<array>: audio holds NaN", P),
    ("audio inf", one({"type": "audio", "audio": np.full(800, np.inf, np.float32)}), MediaArrayError, "infinite", P),
    ("audio empty", one({"type": "audio", "audio": np.zeros(0, np.float32)}), MediaArrayError, "empty", P),
    ("audio 3-D", one({"type": "audio", "audio": np.zeros((1, 2, 800), np.float32)}), MediaArrayError, "shape", P),
    (
        "audio window past end",
        one({"type": "audio", "audio": np.zeros(800, np.float32), "start_s": 1.0}),
        WIN,
        "window",
        P,
    ),
    # Files
    ("wav of 19 ms", one({"type": "audio", "audio": F("blip")}), MediaTooShortError, "blip.wav: audio lasts 19 ms", P),
    ("wav cut in half", one({"type": "audio", "audio": F("cut")}), CorruptMediaError, "cut.wav: truncated", P),
    ("missing image", one({"type": "image", "image": "/no/a.png"}), MediaNotFoundError, "/no/a.png: file not", P),
    ("text as video", vid(video=F("notes")), UnsupportedMediaError, "notes.mp4: not a recognised", P),
    (
        "file URL with %20",
        one({"type": "image_url", "image_url": {"url": "file:///no%20such.png"}}),
        OSError,
        "/no such",
        P,
    ),
    ("data URL of text", one({"type": "image", "image": "data:;base64," + _b64(b"hi" * 9)}), MediaError, "<bytes>", P),
    # Windows, frame numbers and frames lists
    ("start_s negative", vid(start_s=-1), WIN, "start_s must be a number of seconds >= 0", P),
    ("start_s string", vid(start_s="1"), WIN, "start_s must be", P),
    ("window past the end", vid(start_s=9.0), WIN, "silent.mp4: empty or negative time window", P),
    ("indices and window", vid(frame_indices=[1], end_s=1), WIN, "not both", P),
    ("indices from 0", vid(frame_indices=[0, 1]), WIN, "1-based", P),
    ("indices unsorted", vid(frame_indices=[3, 2]), WIN, "increasing", P),
    ("indices floats", vid(frame_indices=[1.5]), WIN, "integers", P),
    ("indices overflow", vid(frame_indices=[10**30]), WIN, "too large", P),
    ("indices past the end", vid(frame_indices=[1, 51]), WIN, "silent.mp4: frame_indices reach frame 51 (2.00s)", P),
    ("frames without indices", vid(frames=[F("crop")]), WIN, "need frame_indices", P),
    ("crops past the video", vid(frames=[F("crop")], frame_indices=[60]), WIN, "silent.mp4: frame_indices reach", P),
    (
        "frames count mismatch",
        vid(video="", frames=[F("crop")], frame_indices=[1, 2]),
        WIN,
        "lists 1 images but frame_indices has 2",
        P,
    ),
    ("frames and window", vid(video="", frames=[F("crop")], start_s=0), WIN, "not start_s/end_s", P),
    ("frames empty", vid(video="", frames=[]), WIN, "non-empty list", P),
    ("frames not paths", vid(video="", frames=[3]), WIN, "image paths", P),
    ("missing crop", vid(video="", frames=["/no/00001.jpg"]), MediaNotFoundError, "/no/00001.jpg: file not found", P),
]


@pytest.mark.parametrize("name, batch, error, text, at", CASES, ids=[c[0] for c in CASES])
def test_bad_conversations(tiny_processor, files, name, batch, error, text, at):
    with pytest.raises(error) as caught:
        tiny_processor(_resolve(batch, files))
    assert isinstance(caught.value, ValueError | MediaError)  # the CLI reports both as one line
    message = str(caught.value)
    assert text in message and message.startswith(at), message


@pytest.mark.parametrize(
    "limits",
    [{"frames": 2.5}, {"frames": True}, {"seconds": float("nan")}, {"seconds": "10"}, {"fps": 2}, [("frames", 2)]],
    ids=["fractional frames", "bool frames", "NaN seconds", "string seconds", "unknown key", "not a dict"],
)
def test_bad_limits(tiny_processor, limits):
    with pytest.raises(ProcessorInputError, match="limits take positive 'frames'"):
        tiny_processor([user()], limits=limits)


def test_bad_padding_side(tiny_processor):
    with pytest.raises(ProcessorInputError, match="padding_side must be 'left' or 'right'"):
        tiny_processor([user()], padding_side="middle")


def test_later_parts_are_named(tiny_processor):
    conversations = [user(), [{"role": "system", "content": "Be brief."}, *user({"type": "audio", "audio": [1.0]})]]
    with pytest.raises(ProcessorInputError, match=r"^conversation 1, message 1, content part 0 \(audio\): "):
        tiny_processor(conversations)


# ---------------------------------------------------------------------------------------------------------------
# Accepted with a documented conversion: each reaches the model as finite embeddings


def _face(size=160):
    return np.asarray(Image.fromarray(synthetic.astronaut()[30:330, 120:420]).resize((size, size)))


ACCEPTED = [
    ("grayscale 2-D", lambda: {"type": "image", "image": _face().mean(axis=2).astype(np.uint8)}, 1, 0),
    ("RGBA", lambda: {"type": "image", "image": np.dstack([_face(), np.full((160, 160), 200, np.uint8)])}, 1, 0),
    ("float in [0, 1]", lambda: {"type": "image", "image": _face() / 255.0}, 1, 0),
    ("PIL picture", lambda: {"type": "image", "image": Image.fromarray(_face())}, 1, 0),
    ("stereo (2, N)", lambda: {"type": "audio", "audio": np.stack([synthetic.tone(300, 1.0)] * 2)}, 0, 16000),
    ("stereo (N, 2)", lambda: {"type": "audio", "audio": np.stack([synthetic.tone(300, 1.0)] * 2, axis=1)}, 0, 16000),
    ("int16 PCM", lambda: {"type": "audio", "audio": (synthetic.tone(300, 0.5) * 32767).astype(np.int16)}, 0, 8000),
    (
        "audio window",
        lambda: {"type": "audio", "audio": synthetic.tone(300, 2.0), "start_s": 0.5, "end_s": 1.0},
        0,
        8000,
    ),
    ("25 ms of audio", lambda: {"type": "audio", "audio": synthetic.tone(300, 0.025)}, 0, 400),
    ("numpy window", lambda: {"type": "audio", "audio": synthetic.tone(300, 1.0), "end_s": np.float32(0.5)}, 0, 8000),
]


@pytest.mark.parametrize("name, make, images, samples", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_conversions_reach_the_model(tiny_model, tiny_processor, name, make, images, samples):
    batch = tiny_processor([user(make())])
    assert ("pixel_values" in batch) == bool(images)
    if images:
        assert batch["image_has_face"].tolist() == [True]
    if samples:
        assert batch["audio_lengths"].tolist() == [samples]
    assert torch.isfinite(tiny_model.build_inputs_embeds(**batch)).all()


# ---------------------------------------------------------------------------------------------------------------
# From the command line: one line naming the file, exit 1, no traceback


@pytest.mark.parametrize("name", ["blip", "cut"])
def test_analyze_cli_refuses_bad_audio(cli, tiny_dir, files, name):
    """Refused while encoding, before vLLM starts."""
    path = files[name]
    result = cli("analyze", path, "--model", tiny_dir / "emoreason")
    line = assert_refused(result, str(path), code=1)
    assert ("audio lasts 19 ms" if name == "blip" else "truncated") in line, line
