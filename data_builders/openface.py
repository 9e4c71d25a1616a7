"""OpenFace 2.0 per-frame AU CSVs (`AUxx_r` intensity 0-5, `AUxx_c` presence 0/1) as an AU source joined to any
video dataset: `--openface DIR` looks for DIR/<video stem>.csv for each sample's video.

Samples that have no AU labels of their own get the AUs present in most of their (successfully tracked) frames
and the mean intensities, so their explanations become AU-grounded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from data_builders.common import BuildOptions, BuildReport
from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample


def _au_name(column: str) -> str:
    return "AU" + str(int(column.strip()[2:4]))  # " AU01_r" -> "AU1"


def read_openface(path: Path) -> dict:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise AnnotationError(path, 1, "", "empty OpenFace CSV") from None
        rows = list(reader)
    if "frame" not in header or not any(h.endswith("_r") for h in header):
        raise AnnotationError(path, 1, ",".join(header[:8]), "not an OpenFace CSV (no 'frame' / AUxx_r columns)")
    try:
        table = np.array([[float(v) for v in row] for row in rows], dtype=np.float64).reshape(len(rows), len(header))
    except ValueError:
        bad = next(i for i, row in enumerate(rows) if not _numeric(row) or len(row) != len(header))
        raise AnnotationError(path, bad + 2, ",".join(rows[bad])[:200], "non-numeric or short OpenFace row") from None
    column = {h: i for i, h in enumerate(header)}
    success = table[:, column["success"]] > 0 if "success" in column else np.ones(len(rows), bool)
    return {
        "frame": table[:, column["frame"]].astype(int),
        "success": success,
        "intensity": {_au_name(h): table[:, i] for h, i in column.items() if h.startswith("AU") and h.endswith("_r")},
        "presence": {_au_name(h): table[:, i] for h, i in column.items() if h.startswith("AU") and h.endswith("_c")},
    }


def _numeric(row) -> bool:
    try:
        [float(v) for v in row]
        return True
    except ValueError:
        return False


def join(samples: list[Sample], folder: Path, options: BuildOptions, report: BuildReport) -> int:
    """Attach OpenFace AUs to samples with a video; returns how many samples were joined."""
    cache: dict[str, dict | None] = {}
    joined = 0
    for sample in samples:
        if not sample.video:
            continue
        stem = Path(sample.video).stem
        for name in (sample.subject, stem):
            if name and name not in cache:
                path = Path(folder) / f"{name}.csv"
                cache[name] = read_openface(path) if path.exists() else None
        data = cache.get(sample.subject) or cache.get(stem)
        if data is None:
            continue
        rows = data["success"].copy()
        if sample.frame_indices:
            rows &= np.isin(data["frame"], sample.frame_indices)
        if not rows.any():
            continue
        sample.au_intensity = {au: round(float(v[rows].mean()), 3) for au, v in data["intensity"].items()}
        if not sample.aus and sample.task != "au":
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
                sample.transcript,
                seed=options.seed,
            )
        joined += 1
    return joined
