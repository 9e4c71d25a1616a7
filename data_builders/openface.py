"""OpenFace 2.0 per-frame AU CSVs (`AUxx_r` intensity 0-5, `AUxx_c` presence 0/1) as an AU source joined to any
video dataset: `--openface DIR` looks for DIR/<video stem>.csv for each sample's video.

Samples that have no AU labels of their own get the AUs present in most of their (successfully tracked) frames
and the mean intensities, so their explanations become AU-grounded.
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


def read_openface(path: Path) -> dict:
    """frame numbers, tracking success, and per-AU intensity (`_r`) and presence (`_c`) columns of one CSV. Only
    the columns used are read; each of their values must be a finite number (a bad one names its line)."""
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
    if "frame" not in header or not any(kind == "r" for _, kind in aus.values()):
        raise AnnotationError(path, header_line, ",".join(header[:8]), "not an OpenFace CSV (no 'frame' / AUxx_r)")
    names = ["frame"] + [n for n in ("success", "timestamp") if n in header]
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
            raise AnnotationError(path, line_no, text, "OpenFace values must be finite (and frames whole numbers)")
        table[row] = values
    column = {name: table[:, k] for k, name in enumerate(names)}
    au_columns = {aus[i]: table[:, k] for k, i in enumerate(sorted(aus), start=len(names))}
    return {
        "frame": column["frame"].astype(int),
        "success": column["success"] > 0 if "success" in column else np.ones(len(table), bool),
        "timestamp": column.get("timestamp"),
        "intensity": {au: v for (au, kind), v in au_columns.items() if kind == "r"},
        "presence": {au: v for (au, kind), v in au_columns.items() if kind == "c"},
    }


def join(samples: list[Sample], folder: Path, options: BuildOptions, report: BuildReport) -> int:
    """Attach OpenFace AUs to samples with a video (restricted to the sample's frames or time window); returns how
    many samples were joined. A malformed CSV stops the build, or with --skip-bad is counted and not joined."""
    cache: dict[str, dict | None] = {}
    joined = 0
    for sample in samples:
        if not sample.video:
            continue
        stem = Path(sample.video).stem
        # ABAW's subject is its video's name (`_left` / `_right` included); elsewhere it is a person.
        names = (sample.subject, stem) if sample.dataset == "abaw" else (stem,)
        for name in names:
            if name and name not in cache:
                path = Path(folder) / f"{name}.csv"
                cache[name] = guarded(options, report, read_openface, path) if path.is_file() else None
        data = next((cache[n] for n in names if n and cache.get(n) is not None), None)
        if data is None:
            continue
        rows = data["success"].copy()
        if sample.frame_indices:
            rows &= np.isin(data["frame"], sample.frame_indices)
        elif sample.start_s >= 0 and data["timestamp"] is not None:
            rows &= (data["timestamp"] >= sample.start_s) & (data["timestamp"] <= sample.end_s)
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
