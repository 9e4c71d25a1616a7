"""The evaluation files a user may hand-edit or hand over (predictions.jsonl, run.json, challenge files, sample and
reference lists), read line by line with each line bounded, every problem one error naming the file, the line and
the field, as the data builders name theirs:

    for number, text, ended in numbered_lines(path, "submission"):    # UTF-8 lines, at most MAX_LINE_BYTES each
        ...
    settings = read_run_settings(path)                                 # run.json, checked key by key
    sample = check_prediction(record, path, number, task, labels)      # one predictions.jsonl line

    predictions.jsonl:3: label: "Joy" is not one of Neutral, Anger, Disgust, ...
    run.json:5: max_samples: must be a whole number of at least 1 or null, got -3
    sub.csv:1: not UTF-8 text: it starts with a UTF-16 byte-order mark; save it as UTF-8

Memory: a reader holds one line at a time, whatever the size of the file; a file that is one giant line, or
gigabytes of NUL bytes, is refused at its first line after reading MAX_LINE_BYTES of it.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import stat
from collections.abc import Iterator
from pathlib import Path

MAX_LINE_BYTES = 4 * 1024**2  # a prediction line (reasoning and answer) is a few kB, a challenge file's line 100 B
MAX_SETTINGS_BYTES = 1024**2  # run.json holds a dozen settings
# One video's ABAW annotation file (a line per frame, "3" or "0,1,...,0" or "0.12,-0.5"), which the data builders'
# reader holds whole: 2M lines is 18 hours at 30 fps, 32 MB over a million AU lines.
MAX_ANNOTATION_LINES = 2_000_000
MAX_ANNOTATION_BYTES = 32 * 1024**2
MAX_BLANK_RUN = 100_000  # blank lines in a row: no file of ours has them, and gigabytes of newlines take minutes

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class EvalFileError(ValueError):
    """A problem in one of the user's evaluation files: `FILE:LINE: field: reason` (line and field where known)."""

    def __init__(self, path, line: int | None, field: str | None, reason: str):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


def shown(value, width: int = 60) -> str:
    """A value as JSON, cut short: what a message quotes of the user's data."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def regular_file(path, what: str) -> Path:
    """`path` if it is a readable regular file; a folder, a pipe or a device (which could block or never end) is
    refused naming it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what})") from None
    if stat.S_ISDIR(mode):
        raise EvalFileError(path, None, None, f"is a folder, not {_a(what)}")
    if not stat.S_ISREG(mode):
        raise EvalFileError(path, None, None, f"is not a regular file (a pipe or a device?); expected {_a(what)}")
    return path


def _decoded(path, number: int, raw: bytes) -> str:
    zero = raw.find(b"\0")
    if zero >= 0:
        raise EvalFileError(path, number, None, f"a NUL byte at column {zero + 1} (a binary or UTF-16 file?); "
                                                "expected UTF-8 text")  # fmt: skip
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalFileError(path, number, None, f"not UTF-8 text (byte {exc.start + 1} of the line)") from None


def _check_bom(path, head: bytes) -> bytes:
    """The head without a UTF-8 byte-order mark; any other encoding's mark is refused."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise EvalFileError(path, 1, None, f"not UTF-8 text: it starts with a {name} byte-order mark; save it as "
                                               "UTF-8")  # fmt: skip
    return head[len(codecs.BOM_UTF8) :] if head.startswith(codecs.BOM_UTF8) else head


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def numbered_lines(path, what: str, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str, bool]]:
    """(1-based line number, text without its line end, whether a newline ended it) of each line of a UTF-8 file.
    "\\r\\n" endings and a UTF-8 byte-order mark are accepted; a line over `limit` bytes, a NUL byte, other
    encodings, bytes that are not UTF-8 and over MAX_BLANK_RUN blank lines in a row are refused naming the line.
    Holds one line at a time."""
    path = regular_file(path, what)
    with open(path, "rb") as f:
        number = blank = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            number += 1
            if number == 1:
                raw = _check_bom(path, raw)
            if len(raw) > limit:
                raise EvalFileError(path, number, None, f"the line is longer than {limit} bytes (is this {_a(what)}?)")
            blank = blank + 1 if raw.isspace() else 0
            if blank > MAX_BLANK_RUN:
                raise EvalFileError(path, number, None, f"over {MAX_BLANK_RUN} blank lines in a row (is this "
                                                        f"{_a(what)}?)")  # fmt: skip
            ended = raw.endswith(b"\n")
            text = _decoded(path, number, raw[:-1] if ended else raw)
            yield number, text[:-1] if text.endswith("\r") else text, ended


def text_lines(path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    for number, text, _ in numbered_lines(path, what):
        if text.strip():
            yield number, text.strip()


def check_annotation_file(path) -> int:
    """An annotation file small enough to be read whole: at most MAX_ANNOTATION_BYTES, MAX_ANNOTATION_LINES lines
    of at most 4 kB, each checked as `numbered_lines` does. Returns its line count."""
    what = "annotation file"
    size = regular_file(path, what).stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise EvalFileError(path, None, None, f"{size} bytes, over {MAX_ANNOTATION_BYTES} (is this {_a(what)}?)")
    count = 0
    for count, _, _ in numbered_lines(path, what, limit=4096):
        if count > MAX_ANNOTATION_LINES:
            raise EvalFileError(path, count, None, f"more than {MAX_ANNOTATION_LINES} lines (is this {_a(what)}?)")
    return count


def parse_json_line(path, number: int, text: str):
    """JSON text that starts on line `number`; a problem names the line it is on."""
    try:
        return json.loads(text)
    except RecursionError:
        raise EvalFileError(path, number, None, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise EvalFileError(
            path, number + exc.lineno - 1, None, f"not JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise EvalFileError(path, number, None, f"not JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# run.json


def field_line(text: str, key: str) -> int:
    """The line of a JSON document where `"key":` first appears (1 when it does not)."""
    match = re.search(rf'"{re.escape(key)}"\s*:', text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def whole_number(text: str, digits: int = 12) -> bool:
    """ASCII digits only, and not absurdly many (`str.isdigit` takes "²", which `int` refuses)."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_settings_object(path, what: str = "run settings file (run.json)", limit: int = MAX_SETTINGS_BYTES):
    """A JSON object of settings and its text, at most `limit` bytes of it."""
    path = regular_file(path, what)
    if path.stat().st_size > limit:
        raise EvalFileError(path, None, None, f"over {limit} bytes; is this {_a(what)}?")
    with open(path, "rb") as f:
        data = _check_bom(path, f.read(limit + 1))
    for number, raw in enumerate(data.split(b"\n"), start=1):
        _decoded(path, number, raw)
    text = data.decode("utf-8")
    settings = parse_json_line(path, 1, text) if text.strip() else None
    if not isinstance(settings, dict):
        raise EvalFileError(path, 1, None, f"expected a JSON object, got {shown(settings)}")
    return settings, text


def dataset_splits(data_dir) -> list[str]:
    """The splits of a dataset folder, after checking the two files of it that eval reads as JSON
    (dataset_dict.json, build_report.json; the data builders write them, a hand edit can break them)."""
    data_dir = Path(data_dir)
    path = data_dir / "dataset_dict.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir}: not a dataset folder (write one with `emoreason data build`)")
    index, text = read_settings_object(path, "dataset index (dataset_dict.json)")
    splits = index.get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(x, str) and x for x in splits):
        raise EvalFileError(path, field_line(text, "splits"), "splits", f"must be a list of split names, got "
                            f"{shown(splits)}")  # fmt: skip
    path = data_dir / "build_report.json"
    if path.exists():
        report, text = read_settings_object(path, "build report (build_report.json)", 64 * MAX_SETTINGS_BYTES)
        if not isinstance(report.get("dataset"), str):
            raise EvalFileError(path, field_line(text, "dataset"), "dataset",
                                f"must be the dataset's name, got {shown(report.get('dataset'))}")  # fmt: skip
        options = report.get("options", {})
        classes = options.get("classes") if isinstance(options, dict) else None
        if not isinstance(options, dict) or not (classes is None or _whole(classes)):
            raise EvalFileError(path, field_line(text, "options"), "options",
                                f"must be an object of build options, got {shown(options)}")  # fmt: skip
    return splits


def read_run_settings(path) -> dict:
    """An `eval run` folder's settings (run.json), each one checked; a problem names the file, line and key."""
    from mllm.output import TASKS

    settings, text = read_settings_object(path)

    def fail(key: str, reason: str):
        raise EvalFileError(path, field_line(text, key), key, reason)

    for key in ("data", "split", "task"):
        if key not in settings:
            raise EvalFileError(path, 1, key, "missing; an eval run's settings name its data, split and task")
    for key in ("data", "split", "model", "adapter"):
        value = settings.get(key)
        if key in settings and not (isinstance(value, str) and value.strip()) and not (key == "adapter" and
                                                                                      value is None):  # fmt: skip
            fail(key, f"must be a non-empty string{' or null' if key == 'adapter' else ''}, got {shown(value)}")
    if settings["task"] not in TASKS:
        fail("task", f"must be one of {', '.join(TASKS)}, got {shown(settings['task'])}")
    shard = settings.setdefault("shard", "1/1")
    part, sep, total = shard.partition("/") if isinstance(shard, str) else ("", "", "")
    if not (sep and whole_number(part) and whole_number(total) and 1 <= int(part) <= int(total)):
        fail("shard", f'must be "I/N" with 1 <= I <= N, got {shown(shard)}')
    if "max_new_tokens" in settings and not (_whole(settings["max_new_tokens"]) and settings["max_new_tokens"] >= 1):
        fail("max_new_tokens", f"must be a whole number of at least 1, got {shown(settings['max_new_tokens'])}")
    samples = settings.get("max_samples")
    if samples is not None and not (_whole(samples) and samples >= 1):
        fail("max_samples", f"must be a whole number of at least 1 or null, got {shown(samples)}")
    data_dir = Path(settings["data"])
    if not (data_dir / "dataset_dict.json").is_file():
        fail("data", f"{data_dir} is not a dataset folder (moved or deleted?)")
    splits = dataset_splits(data_dir)
    if settings["split"] not in splits:
        fail("split", f"{data_dir} has no split {shown(settings['split'])}; it has {', '.join(splits)}")
    return settings


# ---------------------------------------------------------------------------------------------------------------
# predictions.jsonl


def _probability_log(value) -> bool:
    # Sums of log-probabilities are <= 0; a little slack for rounding, and never one whose exp overflows.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value <= 1e-6


def check_prediction(record, path, number: int, task: str | None = None, labels: tuple[str, ...] = (),
                     ids=None, ids_from: str = "the dataset") -> str:  # fmt: skip
    """The id of one predictions.jsonl record, after checking what scoring reads of it (with `task`): `ok`, the
    task's answer fields, `answer_logprob`, `cited_aus`, and (with `ids`) that the id is one of the samples."""
    from mllm.labels import ABAW_AUS

    def fail(field: str, reason: str):
        raise EvalFileError(path, number, field, reason)

    if not isinstance(record, dict):
        raise EvalFileError(path, number, None, f"expected a JSON object (a prediction), got {shown(record)}")
    if "id" not in record:
        fail("id", "missing; each prediction names its sample")
    sample = record["id"]
    if not isinstance(sample, str) or not sample:
        fail("id", f"must be a sample id (a non-empty string), got {shown(sample)}")
    if ids is not None and sample not in ids:
        fail("id", f"{shown(sample)} is not a sample of {ids_from}")
    if task is None:
        return sample
    if record.get("task", task) != task:
        fail("task", f"{shown(record['task'])} in a run of task {task!r}")
    if "ok" not in record:
        fail("ok", "missing (true: the answer parsed; false: it did not)")
    if not isinstance(record["ok"], bool):
        fail("ok", f"must be true or false, got {shown(record['ok'])}")
    logprob = record.get("answer_logprob")
    if logprob is not None and not _probability_log(logprob):
        fail("answer_logprob", f"must be a log-probability (a number <= 0) or null, got {shown(logprob)}")
    cited = record.get("cited_aus", [])
    if not isinstance(cited, list) or not all(isinstance(a, str) for a in cited):
        fail("cited_aus", f"must be a list of AU names, got {shown(cited)}")
    if not record["ok"]:
        return sample
    if task == "expr":
        label = record.get("label")
        if label is None:
            fail("label", "missing; an answered expression prediction has one")
        if label not in labels:
            fail("label", f"{shown(label)} is not one of {', '.join(labels)}")
    elif task == "au":
        aus = record.get("aus")
        if not isinstance(aus, list) or not all(isinstance(a, str) and a in ABAW_AUS for a in aus):
            fail("aus", f"must be a list of AUs among {', '.join(ABAW_AUS)}, got {shown(aus)}")
        if len(set(aus)) != len(aus):
            fail("aus", f"an AU is listed twice: {shown(aus)}")
    elif task == "va":
        for key in ("valence", "arousal"):
            value = record.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and -1 <= value <= 1
            if not ok:
                fail(key, f"must be a number in [-1, 1], got {shown(value)}")
    else:
        answer = record.get("ambivalence_hesitancy")
        if answer not in ("present", "absent"):
            fail("ambivalence_hesitancy", f'must be "present" or "absent", got {shown(answer)}')
    return sample
