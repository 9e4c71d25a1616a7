"""Stage 3: `emoreason train synthesize` keeps exactly the completions the rewards pass, writes them as SFT data that
`load_split` reads with every column kept, and refuses (writing nothing) when nothing passes or the input is bad."""

import doctest
import json

import pytest
from datasets import load_from_disk

from data_builders.read import dataset_label_space, load_split
from mllm.cli import main
from train import synthesize as synth

WRONG_LABEL = "<think>Observations: marked AU4 (brow lowerer). So the answer is Anger.</think><answer>Anger</answer>"
UNPARSEABLE = "Happiness, I think"


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """`emoreason data build rafdb` over warped real faces with OpenFace AUs (3 training identities, 1 held out)."""
    from mllm.samples.expression_photos import write_rafdb_expression_tree

    root = tmp_path_factory.mktemp("synth")
    write_rafdb_expression_tree(root / "rafdb", root / "openface", train_faces=3, test_faces=1, seed=0)
    out = root / "data"
    assert main(["data", "build", "rafdb", "--root", str(root / "rafdb"), "--openface", str(root / "openface"),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def _args(tiny_dir, data, out, *extra):
    return ["train", "synthesize", "--model", str(tiny_dir / "emoreason"), "--data", str(data), "--out", str(out),
            *map(str, extra)]  # fmt: skip


def test_doctests():
    assert doctest.testmod(synth).failed == 0


def test_untrained_model_passes_nothing_and_nothing_is_written(tiny_dir, synth_data, tmp_path, capsys):
    out = tmp_path / "synth"
    extra = ("--max-samples", 2, "--num-generations", 2, "--max-new-tokens", 16)
    assert main(_args(tiny_dir, synth_data, out, *extra)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no sample kept" in err and "4 completions for 2 samples" in err and "nothing written" in err
    assert not out.exists()  # the claimed folder is taken back: no empty dataset, no marker


def test_exactly_the_passing_completion_is_kept(tiny_dir, synth_data, tmp_path):
    rows = load_split(synth_data, "train")
    refused = rows[0]["id"]  # gets wrong completions only
    calls = []

    def generate(batch):
        calls.append(len(batch))
        return [
            [UNPARSEABLE, WRONG_LABEL] if row["id"] == refused else [UNPARSEABLE, row["target"], WRONG_LABEL]
            for row in batch
        ]

    out = tmp_path / "synth"
    synthesis = synth.synthesize(tiny_dir / "emoreason", synth_data, out, batch_size=3, generate=generate)
    assert calls == [3] * (len(rows) // 3) + ([len(rows) % 3] if len(rows) % 3 else [])
    assert synthesis["kept"] == len(rows) - 1 and synthesis["samples"] == len(rows)
    assert synthesis["per_task"]["expr"] == {
        "samples": len(rows),
        "generated": 3 * len(rows) - 1,
        "passed": len(rows) - 1,
        "kept": len(rows) - 1,
    }

    kept = load_split(out, "train")  # what `emoreason train sft --data OUT` reads
    assert dataset_label_space(out) == "basic7"
    source = {row["id"]: row for row in load_from_disk(str(synth_data))["train"]}
    written = load_from_disk(str(out))["train"]
    assert sorted(written["id"]) == sorted(i for i in source if i != refused)
    assert written.column_names == list(source[refused])
    for row in written:
        original = source[row["id"]]
        assert row["target"] == original["target"]  # the reference-like completion, not the wrong ones
        for name in ("image", "expression", "aus", "au_intensity", "target_grounding", "prompt", "source_line"):
            assert row[name] == original[name], name
        meta = json.loads(row["meta"])
        assert meta["synthesized_from"] == str(tiny_dir / "emoreason")
        assert meta["rewards"]["format"] == meta["rewards"]["expression"] == meta["rewards"]["consistency"] == 1.0
        assert meta["rewards"]["va"] is None and meta["rewards"]["au_f1"] >= 0.5
        weighted = [value * synth.DEFAULT_WEIGHTS[name] for name, value in meta["rewards"].items() if value]
        assert meta["reward"] == pytest.approx(sum(weighted))
    assert len(kept) == len(written)
    report = json.loads((out / "build_report.json").read_text())
    assert report["dataset"] == "rafdb" and report["samples"] == {"train/expr": len(rows) - 1}
    assert report["synthesis"]["thresholds"] == synth.DEFAULT_THRESHOLDS
    assert not list(out.parent.glob(".*emoreason-tmp*"))

    # A second run into the same folder replaces it (it is ours); a stricter threshold keeps nothing and leaves it.
    synth.synthesize(tiny_dir / "emoreason", synth_data, out, generate=generate, max_samples=2)
    assert len(load_split(out, "train")) <= 2
    with pytest.raises(ValueError, match="no sample kept"):
        strict = {**synth.DEFAULT_THRESHOLDS, "length": 1.0}  # the length guard never exceeds 0
        synth.synthesize(tiny_dir / "emoreason", synth_data, out, generate=generate, thresholds=strict)
    assert (out / "dataset_dict.json").is_file()


def test_the_best_passing_completion_wins():
    row = {"task": "expr", "expression": "Happiness", "aus": ["AU6", "AU12"], "target_grounding": "au",
           "valence": -5.0, "arousal": -5.0, "ah": -1, "label_space": "basic7"}  # fmt: skip
    both = "<think>AU6 and AU12 are active: happiness.</think><answer>Happiness</answer>"
    one = "<think>AU12 is active: happiness.</think><answer>Happiness</answer>"
    scored = synth.score([one, both, WRONG_LABEL], row, synth.DEFAULT_THRESHOLDS)
    assert [s.passed for s in scored] == [False, True, False]  # au_f1 of `one`: 2 * 2/3 - 1 < 0.5
    assert scored[0].rewards["au_f1"] == pytest.approx(1 / 3)
    scored = synth.score([one, both, WRONG_LABEL], row, {**synth.DEFAULT_THRESHOLDS, "au_f1": 0.3})
    assert [s.passed for s in scored] == [True, True, False]
    assert synth.best(scored).completion == both
    unlabelled = {**row, "expression": "", "aus": [], "target_grounding": "labels"}
    scored = synth.score([WRONG_LABEL, UNPARSEABLE], unlabelled, synth.DEFAULT_THRESHOLDS)
    assert [s.passed for s in scored] == [True, False]  # format and consistency only
    assert scored[0].rewards["expression"] is None and scored[0].rewards["au_f1"] is None


def test_constrained_generation_writes_a_dataset(tiny_dir, synth_data, tmp_path, capsys):
    out = tmp_path / "synth"
    permissive = ("--min-reward", "expression=-inf", "--min-reward", "au_f1=-inf", "--min-reward", "consistency=-inf")
    extra = ("--max-samples", 2, "--num-generations", 2, "--max-new-tokens", 96, "--constrained", *permissive)
    assert main(_args(tiny_dir, synth_data, out, *extra)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("kept 2 of 2 samples (expr 2/2)")
    rows = load_split(out, "train")
    assert len(rows) == 2
    meta = [json.loads(m) for m in rows["meta"]]
    assert all(m["rewards"]["format"] == 1.0 and m["synthesized_from"] == str(tiny_dir / "emoreason") for m in meta)
    report = json.loads((out / "build_report.json").read_text())["synthesis"]
    assert report["constrained"] and report["thresholds"]["expression"] is None and report["num_generations"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "missing"}, "model folder not found"),
        ({"--data": "missing"}, "--data folder not found"),
        ({"--split": "validation"}, "no split 'validation'"),
        ({"--min-reward": "format=0"}, "format: fixed at 1"),
        ({"--min-reward": "accuracy=1"}, "expected NAME=VALUE"),
        ({"--num-generations": "0"}, "must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_dir, synth_data, tmp_path, capsys, change, message):
    options = {"--model": str(tiny_dir / "emoreason"), "--data": str(synth_data), "--out": str(tmp_path / "synth")}
    for name, value in change.items():
        options[name] = str(tmp_path / value) if value == "missing" else value
    assert main(["train", "synthesize", *[x for item in options.items() for x in item]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "synth").exists()
