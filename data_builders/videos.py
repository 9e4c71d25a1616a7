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

from data_builders.common import BuildOptions, BuildReport, expression_sample, guarded, read_lines
from data_builders.schema import AnnotationError, Sample
from mllm.labels import LABEL_SPACES

DFEW_CODES = {1: "Happiness", 2: "Sadness", 3: "Neutral", 4: "Anger", 5: "Surprise", 6: "Disgust", 7: "Fear"}
MAFW_LABELS = LABEL_SPACES["mafw11"]


def build_dfew(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    folder = options.root / "EmoLabel_DataSplit"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DFEW split folder not found")
    samples = []
    for part in ("train", "test"):
        for path in sorted(folder.glob(f"{part}*/set_*.csv")):
            fold = re.search(r"set_(\d)", path.name).group(1)
            split = f"fold{fold}_{part}"
            if not options.wants(split=split):
                continue
            for i, (line_no, text) in enumerate(read_lines(path)):
                if i == 0 and not text.split(",")[0].strip().isdigit():
                    continue  # header

                def parse(line_no=line_no, text=text, path=path):
                    fields = [f.strip() for f in text.split(",")]
                    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].lstrip("-").isdigit():
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
    for path in sorted(folder.glob("set_*/*.txt")):
        fold, part = path.parent.name.split("_")[1], path.stem
        split = f"fold{fold}_{part}"
        if not options.wants(split=split):
            continue
        for line_no, text in read_lines(path):

            def parse(line_no=line_no, text=text, path=path):
                fields = text.split()
                if len(fields) != 2:
                    raise AnnotationError(path, line_no, text, "expected '<clip> <label>'")
                clip, label = fields
                if label.isdigit() and 1 <= int(label) <= len(MAFW_LABELS):
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
