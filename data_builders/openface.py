"""OpenFace 2.0 AU CSVs (`AUxx_r` intensity 0-5, `AUxx_c` presence 0/1) as an AU source joined to any video or
image dataset: `--openface DIR` looks for DIR/<video stem>.csv for each sample's video (FeatureExtraction's
format: one row per frame, a `frame` column) and DIR/<image stem>.csv for each sample's image (FaceLandmarkImg's
format: one row per detected face, a `face` column; RAF-DB's `train_00001_aligned.jpg` gives
`train_00001_aligned.csv`, as OpenFace names it).

Samples that have no AU labels of their own get the AUs present in most of their (successfully tracked) frames
and the mean intensities, or for an image those of its most confident face, so their explanations become
AU-grounded (OpenFace's AUs are weak labels: a detector's output, not a FACS coder's).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from data_builders.common import BuildOptions, BuildReport, Undecodable, guarded, not_utf8, text_lines
from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample

_AU_COLUMN = re.compile(r"^AU(\d+)_(r|c)$")


def read_openface(path: Path, kind: str | None = None) -> dict:
    """`kind` ("video": FeatureExtraction's per-frame rows, "image": FaceLandmarkImg's per-face rows), frame or face
    numbers, tracking success, landmark confidence, and per-AU intensity (`_r`) and presence (`_c`) columns of one
    CSV. Only the columns used are read; each of their values must be a finite number (a bad one names its line).
    `kind`: the format the CSV must have (a video's CSV for an image, or the reverse, names its header line)."""
    rows = [(n, t) for n, t in text_lines(path) if isinstance(t, Undecodable) or t.strip()]
    if not rows:
        raise AnnotationError(path, None, "", "empty OpenFace CSV")
    for line_no, text in rows:
        if isinstance(text, Undecodable):
            raise not_utf8(path, line_no, text)
    header_line, header_text = rows[0]
    header = [h.strip() for h in header_text.split(",")]
    aus = {i: _AU_COLUMN.match(h) for i, h in enumerate(header)}
    aus = {i: (f"AU{int(m.group(1))}", m.group(2)) for i, m in aus.items() if m}
    index = "frame" if "frame" in header else "face"
    if index not in header or not any(rc == "r" for _, rc in aus.values()):
        raise AnnotationError(
            path, header_line, ",".join(header[:8]), "not an OpenFace CSV (no 'frame' or 'face' / AUxx_r)"
        )
    found = "video" if index == "frame" else "image"
    if kind is not None and found != kind:
        written = {"video": "FeatureExtraction's per-frame", "image": "FaceLandmarkImg's per-face"}[found]
        raise AnnotationError(
            path, header_line, ",".join(header[:8]), f"OpenFace CSV in {written} format, but the sample is an {kind}"
        )
    names = [index] + [n for n in ("success", "timestamp", "confidence") if n in header]
    needed = [header.index(n) for n in names] + sorted(aus)
    table = np.empty((len(rows) - 1, len(needed)), dtype=np.float64)
    for row, (line_no, text) in enumerate(rows[1:]):
        fields = text.split(",")
        if len(fields) != len(header):
            raise AnnotationError(path, line_no, text, f"expected {len(header)} comma-separated fields")
        try:
            values = [float(fields[i]) for i in needed]
        except ValueError:
            raise AnnotationError(path, line_no, text, "non-numeric OpenFace value") from None
        if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
            raise AnnotationError(path, line_no, text, f"OpenFace values must be finite (and {index}s whole numbers)")
        table[row] = values
    column = {name: table[:, k] for k, name in enumerate(names)}
    au_columns = {aus[i]: table[:, k] for k, i in enumerate(sorted(aus), start=len(names))}
    return {
        "kind": found,
        index: column[index].astype(int),
        "success": column["success"] > 0 if "success" in column else np.ones(len(table), bool),
        "timestamp": column.get("timestamp"),
        "confidence": column.get("confidence"),
        "intensity": {au: v for (au, rc), v in au_columns.items() if rc == "r"},
        "presence": {au: v for (au, rc), v in au_columns.items() if rc == "c"},
    }


def _video_rows(sample: Sample, data: dict) -> np.ndarray:
    """The successfully tracked frames within the sample's frames or time window."""
    rows = data["success"].copy()
    if sample.frame_indices:
        rows &= np.isin(data["frame"], sample.frame_indices)
    elif sample.start_s >= 0 and data["timestamp"] is not None:
        rows &= (data["timestamp"] >= sample.start_s) & (data["timestamp"] <= sample.end_s)
    return rows


def _image_rows(data: dict) -> np.ndarray:
    """The most confident successful face (the first of equals); none when no face succeeded."""
    rows = np.zeros(len(data["success"]), bool)
    if data["success"].any():
        confidence = data["confidence"] if data["confidence"] is not None else np.zeros(len(rows))
        rows[np.flatnonzero(data["success"])[np.argmax(confidence[data["success"]])]] = True
    return rows


def join(samples: list[Sample], folder: Path, options: BuildOptions, report: BuildReport) -> int:
    """Attach OpenFace AUs to samples with a video (restricted to the sample's frames or time window) or an image
    (its most confident face); returns how many samples were joined. A malformed CSV stops the build, or with
    --skip-bad is counted and not joined."""
    cache: dict[str, dict | None] = {}
    joined = 0
    for sample in samples:
        if not sample.video and not sample.image:
            continue
        wanted = "video" if sample.video else "image"
        stem = Path(sample.video or sample.image).stem
        # ABAW's subject is its video's name (`_left` / `_right` included); elsewhere it is a person.
        names = (sample.subject, stem) if sample.dataset == "abaw" and sample.video else (stem,)
        for name in names:
            if name and name not in cache:
                path = Path(folder) / f"{name}.csv"
                cache[name] = guarded(options, report, read_openface, path, wanted) if path.is_file() else None
        data = next((cache[n] for n in names if n and cache.get(n) is not None), None)
        if data is None:
            continue
        rows = _video_rows(sample, data) if wanted == "video" else _image_rows(data)
        if not rows.any():
            continue
        sample.au_intensity = {au: round(float(v[rows].mean()), 3) for au, v in data["intensity"].items()}
        if sample.task != "au" and not any(sample.au_valid):  # AU labels, where a sample has them, come first
            sample.aus = sorted(
                (au for au, v in data["presence"].items() if v[rows].mean() >= 0.5), key=lambda a: int(a[2:])
            )
            answer = {"expr": sample.expression, "va": (sample.valence, sample.arousal), "ah": bool(sample.ah)}[
                sample.task
            ]
            sample.target, sample.target_grounding = build_target(
                sample.id,
                sample.task,
                answer,
                sample.aus,
                sample.au_intensity,
                sample.cues,
                sample.transcript if options.transcript_in_prompt else "",
                seed=options.seed,
            )
        joined += 1
    return joined
