"""Still-image expression datasets: RAF-DB (basic) and AffectNet.

RAF-DB:    ROOT/EmoLabel/list_patition_label.txt   `train_00001.jpg 5` (labels 1-7: Surprise, Fear, Disgust,
           Happiness, Sadness, Anger, Neutral); images in ROOT/Image/aligned/<name>_aligned.jpg or
           ROOT/Image/original/<name>; split from the train_/test_ prefix.
AffectNet: ROOT/Manually_Annotated_file_lists/{training,validation}.csv with a header and
           subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal;
           expression 0-7 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt), 8-10 (None, Uncertain,
           Non-Face) excluded; with 7 classes Contempt is excluded too. Images under ROOT/Manually_Annotated_Images/.
"""

from __future__ import annotations

import csv
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

RAFDB_CODES = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}
AFFECTNET_CODES = {
    0: "Neutral",
    1: "Happiness",
    2: "Sadness",
    3: "Surprise",
    4: "Fear",
    5: "Disgust",
    6: "Anger",
    7: "Contempt",
}
AFFECTNET_EXCLUDED = {8: "None", 9: "Uncertain", 10: "Non-Face"}
AFFECTNET_HEADER = [
    "subdirectory_filepath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
]


def build_rafdb(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    path = options.root / "EmoLabel" / "list_patition_label.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: RAF-DB label list not found")
    labels = LABEL_SPACES["basic7"]
    samples = []

    numbered = read_lines(path, options, report)
    require_data(path, numbered, options, report)
    for line_no, text in numbered:

        def parse(line_no=line_no, text=text):
            fields = text.split()
            if len(fields) != 2 or not fields[1].lstrip("-").isascii() or not fields[1].lstrip("-").isdigit():
                raise AnnotationError(path, line_no, text, "expected '<image name> <label>'")
            name, code = relative_media(path, line_no, text, fields[0]), int(fields[1])
            if code not in RAFDB_CODES:
                raise AnnotationError(path, line_no, text, f"label {code} is outside RAF-DB's 1-7")
            if not name.startswith(("train_", "test_")):
                raise AnnotationError(path, line_no, text, "image name must start with train_ or test_")
            return name, RAFDB_CODES[code]

        row = guarded(options, report, parse)
        if row is None:
            continue
        name, label = row
        split = "train" if name.startswith("train_") else "test"
        if not options.wants(split=split):
            continue
        stem = Path(name).stem
        image = options.root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        if not image.exists():
            image = options.root / "Image" / "original" / name
        if not image.exists():
            report.missing(image)
        samples.append(expression_sample("rafdb", split, stem, "image", image, label, labels, options, path, line_no))
    return samples


def build_affectnet(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    if options.classes not in (7, 8):
        raise ValueError(f"AffectNet has 7 or 8 classes, got {options.classes}")
    folder = options.root / "Manually_Annotated_file_lists"
    files = {"training.csv": "train", "validation.csv": "validation"}
    if not any((folder / f).exists() for f in files):
        raise FileNotFoundError(f"{folder}: AffectNet file lists (training.csv, validation.csv) not found")
    labels = LABEL_SPACES["affectnet8"] if options.classes == 8 else LABEL_SPACES["basic7"]
    for entry in sorted(folder.iterdir()):
        if entry.name not in files and not entry.name.startswith("."):
            report.ignored.append(f"{entry} (not an AffectNet file list: {sorted(files)})")
    samples = []
    for filename, split in files.items():
        path = folder / filename
        if not path.exists() or not options.wants(split=split):
            continue
        numbered = read_lines(path, options, report)
        header = bool(numbered) and numbered[0][1].lower().startswith("subdirectory_filepath")
        if header:
            # Every column is checked: the expression is read from its position.
            line_no, text = numbered.pop(0)
            if [f.strip().lower() for f in text.split(",")] != AFFECTNET_HEADER:
                raise AnnotationError(path, line_no, text, f"header does not match AffectNet's {AFFECTNET_HEADER}")
        require_data(path, numbered, options, report, header=header)
        for line_no, text in numbered:

            def parse(line_no=line_no, text=text, path=path):
                fields = next(csv.reader([text]))
                if len(fields) != len(AFFECTNET_HEADER):
                    raise AnnotationError(
                        path, line_no, text, f"expected {len(AFFECTNET_HEADER)} comma-separated fields"
                    )
                try:
                    code = int(fields[6])
                except ValueError:
                    raise AnnotationError(path, line_no, text, "expression must be an integer") from None
                if code not in AFFECTNET_CODES and code not in AFFECTNET_EXCLUDED:
                    raise AnnotationError(path, line_no, text, f"expression {code} is outside AffectNet's 0-10")
                return relative_media(path, line_no, text, fields[0]), code

            row = guarded(options, report, parse)
            if row is None:
                continue
            relative, code = row
            if code in AFFECTNET_EXCLUDED or (options.classes == 7 and code == 7):
                report.skipped_clips += 1  # excluded by the protocol, not an error
                continue
            image = options.root / "Manually_Annotated_Images" / relative
            if not image.exists():
                report.missing(image)
            name = relative.rsplit(".", 1)[0]  # "1/img.jpg" -> "1/img"; flattening the "/" could merge two
            samples.append(
                expression_sample(
                    "affectnet", split, name, "image", image, AFFECTNET_CODES[code], labels, options, path, line_no
                )
            )
    return samples
