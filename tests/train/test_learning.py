"""Learning, end to end, from files on disk: real photographs (the astronaut and LFW faces shipped in scikit-image)
warped into Happiness / Sadness / Surprise, written in RAF-DB's official layout with OpenFace AU CSVs, run through
`emoreason data build`; `emoreason train sft` with the tiny CPU recipe on the tiny checkpoint then answers for faces
it never saw well above chance, citing its class's AUs; `emoreason train grpo` from that output then raises the mean
total reward.

The recipes run as shipped (only the paths are given). Run these under ATEN_CPU_CAPABILITY=default and =avx2 too,
and with EMOREASON_LEARNING_SEEDS=0,1,2: CI machines differ."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mllm.cli import main
from tests.conftest import SFT_RECIPE

GRPO_RECIPE = SFT_RECIPE.parent / "grpo_tiny_cpu.yaml"

SEEDS = [int(s) for s in os.environ.get("EMOREASON_LEARNING_SEEDS", "0").split(",")]
CLASS_AUS = {
    "Happiness": {"AU6", "AU12"},
    "Sadness": {"AU1", "AU4", "AU15"},
    "Surprise": {"AU1", "AU2", "AU5", "AU26"},
}


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
    """70 training identities and 15 held-out ones, each warped into every class."""
    from mllm.samples.expression_photos import write_rafdb_expression_tree

    root = tmp_path_factory.mktemp("photos")
    summary = write_rafdb_expression_tree(root / "rafdb", root / "openface", train_faces=70, test_faces=15, seed=0)
    assert not set(summary["identities"]["train"]) & set(summary["identities"]["test"])
    out = root / "data"
    assert main(["data", "build", "rafdb", "--root", str(root / "rafdb"), "--openface", str(root / "openface"),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def sft_learned(request, tiny_dir, photo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-learn") / "run"
    args = ["train", "sft", "--config", str(SFT_RECIPE), "--model", str(tiny_dir / "emoreason"), "--data",
            str(photo_data), "--output_dir", str(out), "--report_to", "none", "--seed", request.param]  # fmt: skip
    assert main(list(map(str, args))) == 0
    return out


# A wording of the question that training never uses (it is in neither the dataset nor mllm.output.PARAPHRASES).
UNSEEN_QUESTION = "Tell me which emotion this face shows."


def _asked(messages: list[dict], text: str | None) -> list[dict]:
    """The messages with the user's question replaced by `text` (None: as the dataset asks it)."""
    if text is None:
        return messages
    return [{**m, "content": [{**p, "text": text} if p.get("type") == "text" else p for p in m["content"]]}
            if m["role"] == "user" else m for m in messages]  # fmt: skip


@torch.no_grad()
def held_out_answers(run: Path, data: Path, question: str | None = None) -> list[tuple[dict, str]]:
    """(sample, greedy completion) for every held-out sample, from the final model folder as predict loads it;
    `question` replaces the dataset's wording of the question."""
    from data_builders.read import conversation, load_split
    from mllm.export import load_model
    from mllm.processor import EmoReasonProcessor

    model = load_model(run / "model").eval()
    processor = EmoReasonProcessor.from_pretrained(run / "model")
    rows = load_split(data, "test")
    out = []
    for start in range(0, len(rows), 24):
        chunk = rows.select(range(start, min(start + 24, len(rows))))
        batch = processor([_asked(conversation(r, with_target=False), question) for r in chunk])
        tokens = model.generate(**batch, max_new_tokens=200, do_sample=False)
        out += [(row, processor.decode(t)) for row, t in zip(chunk, tokens, strict=True)]
    return out


def test_sft_answers_held_out_faces_above_chance_citing_the_class_aus(sft_learned, photo_data):
    from mllm.output import parse
    from mllm.scoring import cited_aus

    answers = held_out_answers(sft_learned, photo_data)
    truth = [row["expression"] for row, _ in answers]
    parsed = [parse(text, "expr", "basic7") for _, text in answers]
    predicted = [p.answer if p.ok else None for p in parsed]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    majority = max(Counter(truth).values()) / len(truth)
    report = json.loads((sft_learned / "model" / "train_report.json").read_text())
    losses = [h["loss"] for h in report["log_history"] if "loss" in h]
    print(f"held-out accuracy {accuracy:.3f} (majority class {majority:.3f}); {Counter(predicted)}")
    assert np.mean(losses[-3:]) < 0.25 * np.mean(losses[:3])
    assert np.mean([p.ok for p in parsed]) >= 0.9  # the grammar is learned
    # 3 classes: chance is a third. Measured on 4 seeds: 0.56-0.78 (41 faces never seen in training).
    assert accuracy >= 0.5 and accuracy >= majority + 0.12
    # The reasoning cites the AUs of the class it answers, and of the true class when right.
    cited = [set(cited_aus(text)) for _, text in answers]
    right = [(c, t) for c, p, t in zip(cited, predicted, truth, strict=True) if p == t]
    assert np.mean([c == CLASS_AUS[t] for c, t in right]) >= 0.9
    answered = [(c, p) for c, p in zip(cited, predicted, strict=True) if p in CLASS_AUS]
    assert np.mean([c <= CLASS_AUS[p] for c, p in answered]) >= 0.9


def _accuracy(answers) -> float:
    from mllm.output import parse

    parsed = [(parse(text, "expr", "basic7"), row["expression"]) for row, text in answers]
    return float(np.mean([p.ok and p.answer == truth for p, truth in parsed]))


def test_sft_understands_the_question_asked_in_other_words(sft_learned, photo_data):
    """Training varies the question's wording (train.data.vary_question): asked as users ask it (the README's
    "Which facial expression does the person show?", one of the paraphrases), the held-out faces get answers nearly
    as right as with the dataset's own question. Without the variation the same run answered 0.00 so (nothing in
    the grammar). A wording training never used is printed, not asserted: measured 0.51 natively but 0.15 under
    ATEN_CPU_CAPABILITY=default (it mostly does not parse), too close to the edge for a test."""
    from mllm.output import PARAPHRASES, QUESTIONS

    users_question = "Which facial expression does the person show?"
    assert users_question in PARAPHRASES["expr"] and users_question != QUESTIONS["expr"]
    assert UNSEEN_QUESTION not in PARAPHRASES["expr"] and QUESTIONS["expr"] != UNSEEN_QUESTION
    own = _accuracy(held_out_answers(sft_learned, photo_data))
    asked = _accuracy(held_out_answers(sft_learned, photo_data, users_question))
    unseen = _accuracy(held_out_answers(sft_learned, photo_data, UNSEEN_QUESTION))
    print(f"held-out accuracy: dataset's question {own:.3f}, users' question {asked:.3f}, unseen wording {unseen:.3f}")
    # Measured (seed 0, one wording per sample): 0.585 / 0.488 natively and under ATEN_CPU_CAPABILITY=default,
    # 0.585 / 0.561 under avx2. 3 classes: chance is a third.
    assert asked >= own - 0.15 and asked >= 0.45


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def grpo_learned(request, sft_learned, photo_data, tmp_path_factory):
    """GRPO from the SFT output on 12 training prompts (so every third of the run sees the same prompts), sampling
    with transformers `generate` or in vLLM (`use_vllm: true`, train/rollouts.py)."""
    out = tmp_path_factory.mktemp("grpo-learn") / "run"
    args = ["train", "grpo", "--config", str(GRPO_RECIPE), "--model", str(sft_learned / "model"), "--data",
            str(photo_data), "--output_dir", str(out), "--report_to", "none", "--log_completions", "false",
            "--max_train_samples", 12, "--use_vllm", str(request.param == "vllm").lower()]  # fmt: skip
    assert main(list(map(str, args))) == 0
    return out


def test_grpo_from_the_sft_output_raises_the_mean_reward(grpo_learned):
    report = json.loads((grpo_learned / "model" / "train_report.json").read_text())
    steps = [h for h in report["log_history"] if "reward" in h]
    third = len(steps) // 3
    first, last = steps[:third], steps[-third:]

    def mean(key, rows):
        return float(np.mean([h[key] for h in rows]))

    print(f"mean reward {mean('reward', first):.3f} -> {mean('reward', last):.3f}; format "
          f"{mean('rewards/format/mean', first):.3f} -> {mean('rewards/format/mean', last):.3f}")  # fmt: skip
    assert report["global_step"] == 90 and len(steps) == 90
    # Measured (90 steps, first third -> last third): +0.5 to +0.6 natively; reward ranges over [-1.5, 3].
    assert mean("reward", last) > mean("reward", first) + 0.2
    assert mean("rewards/format/mean", last) > mean("rewards/format/mean", first)
    assert mean("rewards/expression/mean", last) > mean("rewards/expression/mean", first)
