"""Per sample, the truth and the prediction in a metric's form: one set of rules for the report's sample-level
metrics (`eval.report.sample_metrics`) and the metrics per group (`eval.fairness`).

An answer that did not parse counts as wrong: an expression becomes a class of its own (`len(labels)`, never
true), ambivalence/hesitancy the other value than the truth; for AUs it activates none. Valence/arousal has no
wrong value to stand for it, so those samples are left out there (the report counts the answers that did not parse).
"""

from __future__ import annotations

from eval.metrics import VA_INVALID
from mllm.labels import ABAW_AUS


def sample_pairs(rows, predictions: dict, task: str, labels: tuple[str, ...]) -> list[tuple | None]:
    """Per row, (truth, prediction), or None where the row has no label for `task` (and, for VA, where its answer
    is missing or did not parse). expr: class indices into `labels`; ah: 0 or 1 (1: present); au: one 0/1 per
    ABAW AU (lists); va: (valence, arousal) pairs.

    >>> rows = [{"id": "a", "ah": 1}, {"id": "b", "ah": 0}, {"id": "c", "ah": -1}]
    >>> sample_pairs(rows, {"a": {"ok": True, "ambivalence_hesitancy": "present"}, "b": {"ok": False}}, "ah", ())
    [(1, 1), (0, 1), None]
    """
    out: list[tuple | None] = []
    for row in rows:
        p = predictions.get(row["id"])
        ok = bool(p and p.get("ok"))
        if task == "expr" and row["expression"]:
            out.append((labels.index(row["expression"]), labels.index(p["label"]) if ok else len(labels)))
        elif task == "ah" and row["ah"] in (0, 1):
            out.append((row["ah"], (1 if p["ambivalence_hesitancy"] == "present" else 0) if ok else 1 - row["ah"]))
        elif task == "au" and row["au_frames"]:
            truth = set(row["aus"])
            predicted = set(p["aus"]) if ok else set()
            out.append(([int(au in truth) for au in ABAW_AUS], [int(au in predicted) for au in ABAW_AUS]))
        elif task == "va" and ok and row["valence"] != VA_INVALID and row["arousal"] != VA_INVALID:
            out.append(((row["valence"], row["arousal"]), (p["valence"], p["arousal"])))
        else:
            out.append(None)
    return out
