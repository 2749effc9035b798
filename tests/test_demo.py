"""`adajudge demo` end to end on the tiny backbone: same code path as the real demo, smaller defaults."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adajudge_hf.cli import main as cli_main
from adajudge_hf.demo import CAVEAT, JUDGES, PACKAGED, DemoArguments
from adajudge_hf.embedded_data import load_embedded_preferences
from adajudge_hf.tokenization import encode_prompt_response


@pytest.mark.slow
def test_demo_trains_compares_and_packages_a_judge(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    argv = ["demo", "--backbone", "tiny", "--train-pairs", "24", "--eval-pairs", "12", "--epochs", "1"]
    assert cli_main(argv + ["--output-dir", str(output_dir)]) == 0
    printed = capsys.readouterr().out

    summary = json.loads((output_dir / "summary.json").read_text())
    assert list(summary["table"]) == list(JUDGES)
    for name in JUDGES:  # the side-by-side table, printed and saved
        assert name in printed and name in (output_dir / "summary.md").read_text()
        assert summary["table"][name]["held-out pairs"]["num_pairs"] == 12
        assert 0 < summary["table"][name]["best_epoch"] <= 1  # chosen on validation, within the budget
        if name != PACKAGED:  # every judge compared with AdaJudge on the same held-out pairs, with an interval
            difference = summary["table"][name]["difference_to_adajudge"]
            assert difference["ci_low"] <= difference["diff"] <= difference["ci_high"]
    assert set(summary["table"][PACKAGED]["mean_routing"]) == {"last", "mean", "attention"}
    assert CAVEAT in printed  # the table says what it does and does not show
    assert (output_dir / "eval" / "adajudge" / "pairs" / "routing.png").stat().st_size > 0
    assert "total time" in printed

    judge_dir = output_dir / "judge"
    card = (judge_dir / "README.md").read_text()
    assert card.startswith("---") and "adajudge demo --backbone tiny" in card  # numbers labelled with their command
    assert not list(judge_dir.glob("*.bin"))
    # The packaged judge loads like any reward model and reproduces the reported held-out rewards.
    model = AutoModelForSequenceClassification.from_pretrained(judge_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(judge_dir)
    record = json.loads((output_dir / "eval" / "adajudge" / "pairs" / "rewards.jsonl").read_text().splitlines()[0])
    assert model.config.num_refinement_blocks == DemoArguments().num_refinement_blocks
    first = load_embedded_preferences("test", seed=0)[0]
    encoded = encode_prompt_response(tokenizer, first["prompt"], first["chosen"], max_length=384)
    with torch.no_grad():
        reward = model(
            input_ids=torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length])
        )
    # The report was scored from fp16 cached backbone states; the packaged judge recomputes them in fp32.
    assert reward.logits[0, 0].item() == pytest.approx(record["score_chosen"], abs=2e-2)


def test_demo_needs_a_validation_split():
    with pytest.raises(ValueError, match="validation_fraction"):
        DemoArguments(validation_fraction=0.0)
    assert PACKAGED in JUDGES


def test_every_judge_trains_with_the_same_loss():
    # Pooling, not the loss, is what the demo compares: focal BT everywhere, the floor only with a router.
    for name, fields in JUDGES.items():
        assert "focal_gamma" not in fields, name  # the config default (gamma 2) for all
        assert fields.get("entropy_floor_coef", 0.1) == (0.1 if name == PACKAGED else 0.0), name


@pytest.mark.slow
def test_an_interrupted_demo_resumes_from_its_cached_features_and_push_accepts_its_reports(
    tmp_path, capsys, monkeypatch, caplog
):
    """Ctrl-C during training keeps the features of every split; the rerun reuses them (a changed setting does not),
    and the packaged judge's reports carry the fingerprint that `adajudge push --eval-dir` checks."""
    import adajudge_hf.demo as demo
    from adajudge_hf.evaluation.provenance import weight_file_hashes, weights_fingerprint
    from adajudge_hf.hub.folders import check_evaluations_match, read_evaluations

    output_dir = tmp_path / "demo"
    argv = ["demo", "--backbone", "tiny", "--train-pairs", "16", "--eval-pairs", "8", "--epochs", "1"]
    argv += ["--output-dir", str(output_dir)]
    train_heads = demo.train_heads

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train_heads", interrupted)
    assert cli_main(argv) == 130
    cached = sorted(path.name.split("-")[0] for path in (output_dir / "features").glob("*.safetensors"))
    assert cached == ["held", "train"]  # both splits finished before the interruption
    capsys.readouterr()

    monkeypatch.setattr(demo, "train_heads", train_heads)
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "features of train: reused" in printed and "features of held-out-pairs: reused" in printed

    judge_dir = output_dir / "judge"
    report = json.loads((output_dir / "eval" / "adajudge" / "pairs" / "metrics.json").read_text())
    assert report["judge"]["fingerprint"] == weights_fingerprint(weight_file_hashes(judge_dir))
    evaluations = read_evaluations(output_dir / "eval" / "adajudge")
    caplog.clear()
    with caplog.at_level("WARNING", logger="adajudge_hf.hub.folders"):
        check_evaluations_match(evaluations, judge_dir, weight_file_hashes(judge_dir))
    assert not caplog.records  # no "does not record which weights it scored"

    assert cli_main([*argv, "--max-length", "64"]) == 0  # another setting: computed afresh, the cache replaced
    assert "reused" not in capsys.readouterr().out
    assert len(list((output_dir / "features").glob("train-*.safetensors"))) == 1
