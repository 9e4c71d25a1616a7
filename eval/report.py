"""An evaluation run's scores: `metrics.json`, `report.md` and pictures, from its predictions and the dataset.

Sample level, for every dataset: expression accuracy, macro F1 over the label space, UAR and WAR (DFEW/MAFW's);
AU mean F1; VA CCC; ambivalence/hesitancy macro F1 and the positive class's average precision. Frame level, where
the samples carry per-frame labels (ABAW clips, BAH frame segments): the clip answers mapped back to frames
(`eval.frames`) and scored with the challenge's metric (`eval.metrics`). An answer that did not parse counts as
wrong at sample level, and its frames take the nearest answered frame's value at frame level; both are counted.
report.md shows the first few that did not parse, the model's text with control characters escaped.

Explanation faithfulness, where samples have AU labels: precision and recall of the AUs cited in the reasoning
against the labelled ones (pooled over samples), and the share of expression answers whose cited AUs support the
label under EMFACS (`mllm.scoring.supports`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from eval import metrics as m
from eval.samples import sample_pairs
from mllm.labels import ABAW_AUS

TIMELINES = 8  # videos drawn in timelines.png
FAILURE_EXAMPLES = 3  # answers that did not parse, shown in report.md
EXCERPT = (400, 200)  # characters of a completion shown: its start and its end


def sample_metrics(rows, predictions: dict, task: str, labels: tuple[str, ...]) -> tuple[dict, dict]:
    """(metrics, pictures' data) over the samples with a label for `task` (`eval.samples.sample_pairs`)."""
    out: dict = {}
    extra: dict = {}
    pairs = sample_pairs(rows, predictions, task, labels)
    scored = [(row, pair) for row, pair in zip(rows, pairs, strict=True) if pair is not None]
    if not scored or (task == "va" and len(scored) < 2):
        return out, extra
    true = np.array([t for _, (t, _) in scored])
    pred = np.array([p for _, (_, p) in scored])
    if task == "expr":
        n = len(labels)
        per_class = m.class_f1(true, pred, range(n))
        recall = m.uar_war(true, pred)
        out.update({"accuracy": m.accuracy(true, pred), "macro_f1": float(per_class.mean()),
                    "macro_f1_classes": n, "classes_present": int(len(np.unique(true))),
                    "uar": recall["uar"], "war": recall["war"]})  # fmt: skip
        matrix = np.zeros((n, n + 1), dtype=np.int64)
        np.add.at(matrix, (true, pred), 1)
        extra = {"confusion": matrix, "per_class_f1": dict(zip(labels, per_class.tolist(), strict=True))}
    elif task == "au":
        out["au_mean_f1"] = m.au_f1(true, pred)[0]
        extra = {"per_class_f1": {au: float(m.class_f1(true[:, j], pred[:, j], [1])[0])
                                  for j, au in enumerate(ABAW_AUS)}}  # fmt: skip
    elif task == "va":
        out.update({k: v for k, v in m.va_ccc(true, pred).items() if k != "frames"})
    else:
        score = []
        for row, (_, predicted) in scored:
            p = predictions.get(row["id"])
            ok = bool(p and p.get("ok"))
            probability = float(np.exp(p["answer_logprob"])) if p and p.get("answer_logprob") is not None else 0.5
            score.append(probability if ok and predicted == 1 else 1.0 - probability)
        result = m.bah_scores(true, pred, np.array(score) if true.any() else None)
        out.update({k: v for k, v in result.items() if k != "n"})
    out["samples"] = len(scored)
    return out, extra


def frames_of(rows, predictions: dict, task: str, labels: tuple[str, ...], window: int):
    """The per-frame truth and prediction (`eval.frames.Frames`), or None when no sample has per-frame labels."""
    from eval.frames import TRUTH_COLUMNS, map_to_frames

    column = TRUTH_COLUMNS[task]
    framed = [r for r in rows if r["frame_indices"] and r[column]]
    return map_to_frames(framed, predictions, task, labels, window) if framed else None


def frame_metrics(rows, predictions: dict, task: str, labels: tuple[str, ...], window: int, frames=None) -> dict:
    """The challenge's metric over frames, where the samples carry per-frame labels."""
    frames = frames if frames is not None else frames_of(rows, predictions, task, labels, window)
    if frames is None:
        return {}
    out = {"smoothing_window": window, **frames.counts}
    if task == "expr":
        out["expr_macro_f1"], out["frames_scored"] = m.expr_f1(frames.truth, frames.pred, len(labels))
    elif task == "au":
        out["au_mean_f1"], out["frames_scored"] = m.au_f1(frames.truth, frames.pred)
    elif task == "va":
        result = m.va_ccc(frames.truth, frames.pred)
        out.update({"ccc_valence": result["ccc_valence"], "ccc_arousal": result["ccc_arousal"], "va": result["va"],
                    "frames_scored": result["frames"]})  # fmt: skip
    else:
        valid = frames.truth >= 0
        result = m.bah_scores(frames.truth[valid], frames.pred[valid],
                              frames.score[valid] if frames.truth[valid].any() else None)  # fmt: skip
        out.update({k: v for k, v in result.items() if k != "n"})
        out["frames_scored"] = int(valid.sum())
    return out


def faithfulness(rows, predictions: dict, task: str, labels: tuple[str, ...]) -> dict:
    """Cited AUs against labelled AUs (where samples have AU labels), and EMFACS support of expression answers."""
    from mllm.scoring import supports

    hits = cited_total = labelled_total = 0
    samples = 0
    support = []
    for row in rows:
        p = predictions.get(row["id"])
        if p is None or not p.get("ok"):
            continue
        cited = set(p.get("cited_aus", ()))
        if row["au_frames"]:
            labelled = set(row["aus"])
            hits += len(cited & labelled)
            cited_total += len(cited)
            labelled_total += len(labelled)
            samples += 1
        if task == "expr":
            verdict = supports(p["label"], cited, among=labels)
            if verdict is not None:
                support.append(bool(verdict))
    out: dict = {}
    if samples:
        out["cited_au_precision"] = hits / cited_total if cited_total else None
        out["cited_au_recall"] = hits / labelled_total if labelled_total else None
        out["samples_with_au_labels"] = samples
    if support:
        out["answers_supported_by_cited_aus"] = float(np.mean(support))
        out["answers_with_a_prototype"] = len(support)
    return out


def evaluate(rows, predictions: dict, task: str, label_space: str, window: int = 1) -> tuple[dict, dict]:
    from eval.fairness import fairness
    from mllm.labels import label_space as labels_of

    labels = labels_of(label_space)
    ids = [r["id"] for r in rows]
    answered = [i for i in ids if i in predictions]
    failures = [i for i in answered if not predictions[i].get("ok")]
    unreadable = [i for i in failures if predictions[i].get("error") == "unreadable_media"]
    sample, extra = sample_metrics(rows, predictions, task, labels)
    frames = frames_of(rows, predictions, task, labels, window)
    extra["frames"] = frames
    unparsed = [i for i in failures if predictions[i].get("error") != "unreadable_media"]
    extra["failures"] = [(i, predictions[i]) for i in unparsed[:FAILURE_EXAMPLES]]
    result = {
        "task": task,
        "label_space": label_space,
        "samples": len(ids),
        "answered": len(answered),
        "missing": len(ids) - len(answered),
        "unreadable_media": len(unreadable),
        "parse_failures": len(failures) - len(unreadable),
        "parse_failure_rate": (len(failures) - len(unreadable)) / len(answered) if answered else None,
        "sample_level": sample,
        "frame_level": frame_metrics(rows, predictions, task, labels, window, frames),
        "faithfulness": faithfulness(rows, predictions, task, labels),
        "fairness": fairness(rows, predictions, task, labels),
    }
    return result, extra


def macro_f1_text(sample: dict, confusion: np.ndarray | None = None) -> str:
    """The expression macro F1 with what it averages, for example `macro F1 0.3300 (mean over 8 classes: 3 in the
    truth, 2 predicted only, 3 in neither)`: every class of the label space counts, and one not in the truth
    scores 0. `confusion` (true x predicted counts) splits the classes not in the truth into predicted or not."""
    n, present = sample["macro_f1_classes"], sample["classes_present"]
    parts = [f"all {n} in the truth" if present == n else f"{present} in the truth"]
    if present < n and confusion is not None:
        in_truth, predicted = confusion[:n].sum(axis=1) > 0, confusion[:n, :n].sum(axis=0) > 0
        only = int((predicted & ~in_truth).sum())
        counts = {"predicted only": only, "in neither": n - present - only}
        parts += [f"{count} {what}" for what, count in counts.items() if count]
    elif present < n:
        parts.append(f"{n - present} not in it")
    return f"macro F1 {sample['macro_f1']:.4f} (mean over {n} classes: {', '.join(parts)})"


def _excerpt(text: str) -> str:
    head, tail = EXCERPT
    if len(text) <= head + tail + 20:
        return text
    return f"{text[:head]}\n[... {len(text) - head - tail} characters ...]\n{text[-tail:]}"


def _failure_lines(result: dict, failures: list) -> list[str]:
    """The first answers that did not parse: id, the parser's verdict and the completion (cut), each in a fenced
    block with control characters escaped (`serve.analyze.printable`), so neither a terminal showing report.md nor
    a Markdown viewer acts on the model's text."""
    from serve.analyze import printable

    if not failures:
        return []
    lines = [f"### Answers that did not parse (first {len(failures)} of {result['parse_failures']})", ""]
    for sample, record in failures:
        text = "\n".join([f"id: {sample}", f"error: {record.get('error')}: {record.get('message', '')}",
                          "completion:", _excerpt(record.get("completion") or "(not recorded)")])  # fmt: skip
        text = printable(text)
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))  # longer than any run inside
        lines += [fence + "text", text, fence, ""]
    return lines


def _table(title: str, values: dict) -> list[str]:
    if not values:
        return []
    lines = [f"### {title}", "", "| metric | value |", "| --- | ---: |"]
    for key, value in values.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return [*lines, ""]


def _ci(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "-"


def _fairness_lines(fair: dict) -> list[str]:
    lines = []
    for column, result in fair.items():
        lines += [f"### By {column}", "", "| group | n | F1 | 95% CI | TPR | 95% CI |",
                  "| --- | ---: | ---: | --- | ---: | --- |"]  # fmt: skip
        for name, g in result["groups"].items():
            f1, tpr = f"{g['f1']:.3f} | {_ci(g['f1_ci'])}", f"{g['tpr']:.3f} | {_ci(g['tpr_ci'])}"
            lines.append(f"| {name} | {g['n']} | {f1} | {tpr} |")
        tpr_gap = f"{result['tpr_gap']:.3f} {_ci(result['tpr_gap_ci'])}" if result["tpr_gap"] is not None else "-"
        lines += ["", f"Largest gap: F1 {result['f1_gap']:.3f} {_ci(result['f1_gap_ci'])}, TPR {tpr_gap}", ""]
    return lines


def write_report(out: Path, result: dict, extra: dict, settings: dict, all_classes: bool = False) -> list[Path]:
    """metrics.json, report.md and the pictures, each written under a temporary name and renamed into place. The
    confusion matrix leaves out the classes in neither truth nor predictions unless `all_classes`."""
    from eval.pictures import confusion_matrix_picture, f1_bars_picture, shown_classes, timelines_picture
    from mllm.labels import label_space as labels_of
    from mllm.outputs import atomic_path, atomic_write_text

    written = []
    pictures = []
    if "confusion" in extra:
        labels = list(labels_of(result["label_space"]))
        matrix = extra["confusion"][:, : len(labels)]
        picture = confusion_matrix_picture(matrix, labels, f"{result['task']}: confusion (samples)", all_classes)
        _, left_out = shown_classes(matrix, labels, all_classes)
        unused = f"; classes in neither truth nor predictions left out: {', '.join(left_out)}" if left_out else ""
        pictures.append(("confusion_matrix.png", picture,
                         f"Confusion matrix (samples; unparsed answers left out{unused})"))  # fmt: skip
    if "per_class_f1" in extra:
        picture = f1_bars_picture(extra["per_class_f1"], f"{result['task']}: F1 per class (samples)")
        pictures.append(("per_class_f1.png", picture, "F1 per class (samples)"))
    frames = extra.get("frames")
    if frames is not None and result["task"] != "au":
        names = np.asarray(frames.videos)
        shown = [(v, frames.frames[names == v], frames.truth[names == v], frames.pred[names == v])
                 for v in sorted(set(frames.videos))[:TIMELINES]]  # fmt: skip
        labels = list(labels_of(result["label_space"])) if result["task"] == "expr" else ["absent", "present"]
        picture = timelines_picture(shown, result["task"], labels)
        pictures.append(("timelines.png", picture, f"Timelines of the first {len(shown)} videos (frames)"))
    for name, picture, _ in pictures:
        with atomic_path(out / name) as tmp:
            picture.save(tmp, format="PNG")
        written.append(out / name)
    atomic_write_text(out / "metrics.json", json.dumps({**result, "run": settings}, indent=1) + "\n")
    written.append(out / "metrics.json")
    adapter = f", adapter `{settings['adapter']}`" if settings.get("adapter") else ""
    lines = [f"# Evaluation: {result['task']} on {settings.get('data')} [{settings.get('split')}]", "",
             f"Model `{settings.get('model')}`{adapter}", "",
             f"{result['answered']} of {result['samples']} samples answered; {result['parse_failures']} answers did "
             f"not parse; {result['unreadable_media']} samples' media could not be read (counted as wrong).",
             ""]  # fmt: skip
    lines += _table("Frame level (the challenge's metric)", result["frame_level"])
    lines += _table("Sample level", result["sample_level"])
    if "macro_f1_classes" in result["sample_level"]:
        lines += [macro_f1_text(result["sample_level"], extra.get("confusion")) + "; a class not in the truth "
                  "scores F1 0.", ""]  # fmt: skip
    lines += _table("Explanation faithfulness", result["faithfulness"])
    lines += _fairness_lines(result.get("fairness") or {})
    lines += _failure_lines(result, extra.get("failures") or [])
    for name, _, caption in pictures:
        lines += [f"![{caption}]({name})", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    written.append(out / "report.md")
    return written
