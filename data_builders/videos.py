"""Video expression datasets with 5-fold protocols: DFEW (7 classes) and MAFW (11 classes).

DFEW: ROOT/EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv, header `video_name,label`, labels 1-7
      (Happiness, Sadness, Neutral, Anger, Surprise, Disgust, Fear); videos ROOT/Clip/original/<name>.mp4 (names
      zero-padded to 5 digits). Splits are named fold<k>_train / fold<k>_test.
MAFW: ROOT/Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt, lines `<clip>.mp4 <label>` with the
      label a name or 1-11 (anger, disgust, fear, happiness, neutral, sadness, surprise, contempt, anxiety,
      helplessness, disappointment); videos ROOT/data/clips/<clip>.mp4.
"""

from __future__ import annotations

import re
from pathlib import Path

from data_builders.common import (
    BuildOptions,
    BuildReport,
    expression_sample,
    guarded,
    read_lines,
    relative_media,
    require_data,
)
from data_builders.schema import AnnotationError, Sample
from mllm.labels import LABEL_SPACES

DFEW_CODES = {1: "Happiness", 2: "Sadness", 3: "Neutral", 4: "Anger", 5: "Surprise", 6: "Disgust", 7: "Fear"}
DFEW_FOLDER = re.compile(r"^(train|test)\(single-labell?ed\)$")
DFEW_FILE = re.compile(r"^set_([1-5])\.csv$")
MAFW_FOLDER = re.compile(r"^set_([1-5])$")
MAFW_FILES = ("train.txt", "test.txt")
MAFW_LABELS = LABEL_SPACES["mafw11"]


def _split_files(folder: Path, folder_pattern, file_pattern, report: BuildReport, what: str) -> list[tuple]:
    """(folder match, file match, path) of the layout's split files; anything else in those folders is ignored
    and listed (hidden files aside), never read as a split."""
    found = []
    for sub in sorted(folder.iterdir()):
        outer = folder_pattern.match(sub.name) if sub.is_dir() else None
        if outer is None:
            if not sub.name.startswith("."):
                report.ignored.append(f"{sub} (not {what})")
            continue
        for path in sorted(sub.iterdir()):
            inner = file_pattern(path.name) if path.is_file() else None
            if inner is None:
                if not path.name.startswith("."):
                    report.ignored.append(f"{path} (not {what})")
                continue
            found.append((outer, inner, path))
    return found


def build_dfew(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    folder = options.root / "EmoLabel_DataSplit"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DFEW split folder not found")
    what = "a DFEW split file: {train,test}(single-labeled)/set_{1..5}.csv"
    files = _split_files(folder, DFEW_FOLDER, DFEW_FILE.match, report, what)
    files.sort(key=lambda f: (f[0].group(1) != "train", f[2]))
    samples = []
    for outer, inner, path in files:
        split = f"fold{inner.group(1)}_{outer.group(1)}"
        if not options.wants(split=split):
            continue
        numbered = read_lines(path, options, report)
        header = bool(numbered) and not numbered[0][1].split(",")[0].strip().isdigit()
        if header and [f.strip().lower() for f in numbered[0][1].split(",")] == ["video_name", "label"]:
            numbered = numbered[1:]
        else:
            header = False  # not the header: a data line, checked as one
        require_data(path, numbered, options, report, header=header)
        for line_no, text in numbered:

            def parse(line_no=line_no, text=text, path=path):
                fields = [f.strip() for f in text.split(",")]
                if len(fields) != 2 or not all(f.isascii() and f.lstrip("-").isdigit() for f in fields):
                    raise AnnotationError(path, line_no, text, "expected 'video_name,label' (integers)")
                if int(fields[1]) not in DFEW_CODES:
                    raise AnnotationError(path, line_no, text, f"label {fields[1]} is outside DFEW's 1-7")
                return f"{int(fields[0]):05d}", DFEW_CODES[int(fields[1])]

            row = guarded(options, report, parse)
            if row is None:
                continue
            name, label = row
            video = options.root / "Clip" / "original" / f"{name}.mp4"
            if not video.exists():
                report.missing(video)
            samples.append(
                expression_sample(
                    "dfew", split, name, "video", video, label, LABEL_SPACES["basic7"], options, path, line_no
                )
            )
    return samples


def build_mafw(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    folder = options.root / "Train & Test Set" / "single" / "no_caption"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: MAFW single-label split folder not found")
    by_name = {n.lower(): n for n in MAFW_LABELS}
    samples = []
    what = "a MAFW split file: set_{1..5}/{train,test}.txt"
    files = _split_files(folder, MAFW_FOLDER, lambda name: name if name in MAFW_FILES else None, report, what)
    for outer, part, path in files:
        split = f"fold{outer.group(1)}_{Path(part).stem}"
        if not options.wants(split=split):
            continue
        numbered = read_lines(path, options, report)
        require_data(path, numbered, options, report)
        for line_no, text in numbered:

            def parse(line_no=line_no, text=text, path=path):
                fields = text.split()
                if len(fields) != 2:
                    raise AnnotationError(path, line_no, text, "expected '<clip> <label>'")
                clip, label = relative_media(path, line_no, text, fields[0]), fields[1]
                if label.isascii() and label.isdigit() and 1 <= int(label) <= len(MAFW_LABELS):
                    return clip, MAFW_LABELS[int(label) - 1]
                if label.lower() in by_name:
                    return clip, by_name[label.lower()]
                raise AnnotationError(path, line_no, text, f"label {label!r} is outside MAFW's 11 classes")

            row = guarded(options, report, parse)
            if row is None:
                continue
            clip, label = row
            video = options.root / "data" / "clips" / clip
            if not video.exists():
                report.missing(video)
            samples.append(
                expression_sample(
                    "mafw", split, clip.rsplit(".", 1)[0], "video", video, label, MAFW_LABELS, options, path, line_no
                )
            )
    return samples
