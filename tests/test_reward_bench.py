"""RewardBench 2 and RewardBench (v1): official rules on hand-built items, `evaluate` modules, loaders on the synthetic
fixture in the official schema, `adajudge evaluate` reports, and one clear error per kind of bad input."""

import json
import math
import shutil
from pathlib import Path

import datasets
import evaluate
import pytest
import torch

from adajudge_hf.evaluation import (
    ScoringOutput,
    benchmark_metrics,
    evaluate_length_baseline,
    limit_per_group,
    load_benchmark,
    load_reward_bench,
    load_reward_bench_2,
    metric_path,
    report_scores,
    reward_bench_2_scores,
    reward_bench_scores,
    routing_report,
)
from adajudge_hf.evaluation.cli import main
from adajudge_hf.evaluation.report import benchmark_examples
from adajudge_hf.evaluation.reward_bench import REWARD_BENCH_EXAMPLE_COUNTS, REWARD_BENCH_SECTIONS, ties_score


FIXTURES = Path(__file__).parent / "data" / "reward_bench"
RB2_FILE = FIXTURES / "reward_bench_2.jsonl"
RB1_FILE = FIXTURES / "reward_bench_filtered.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bon(subset, item_id, scores):
    return {"subset": subset, "id": item_id, "scores": scores, "num_correct": 1}


def tie_row(kind, number, scores, num_correct):
    return {"subset": "Ties", "id": f"{kind}:{number}", "scores": scores, "num_correct": num_correct}


def pair(subset, item_id, chosen, rejected):
    return {"subset": subset, "id": item_id, "score_chosen": chosen, "score_rejected": rejected}


# ---------------------------------------------------------------- RewardBench 2: best of N


@pytest.mark.parametrize(
    "scores, credit",
    [
        ([3.0, 1.0, 2.0, 0.0], 1.0),  # correct strictly on top
        ([3.0, 3.0, 2.0, 0.0], 1 / 2),  # tie at the top with one wrong completion: 1/2
        ([3.0, 3.0, 3.0, 0.0], 1 / 3),
        ([1.0, 1.0, 1.0, 1.0], 1 / 4),  # all equal: 1/4, not 1 (nor 0)
        ([1.0, 2.0, 0.0, 0.0], 0.0),  # beaten
        ([1.0, 3.0, 1.0, 0.0], 0.0),  # tied with a wrong one, but below the top: 0
        ([3.0, 1.0, 1.0, 1.0], 1.0),  # the wrong ones tie among themselves below it: still 1
    ],
)
def test_best_of_n_credit_follows_the_official_tie_rule(scores, credit):
    result = reward_bench_2_scores([bon("Math", "0", scores)])
    assert result["subsets"]["Math"] == {"score": pytest.approx(100 * credit), "num_prompts": 1}


def test_subset_score_is_the_mean_credit_and_overall_the_mean_over_the_subsets_present():
    items = [
        bon("Math", "0", [3, 1, 2, 0]),
        bon("Math", "1", [3, 3, 0, 0]),
        bon("Focus", "0", [0, 1, 2, 3]),  # ids repeat across subsets: items are keyed by (subset, id)
    ]
    result = reward_bench_2_scores(items)
    assert result["subsets"]["Math"]["score"] == 75.0 and result["subsets"]["Focus"]["score"] == 0.0
    assert result["overall"] == 37.5 and result["num_prompts"] == 3
    assert result["subsets_scored"] == ["Math", "Focus"]
    assert result["subsets_missing"] == ["Factuality", "Precise IF", "Safety", "Ties"]


# ---------------------------------------------------------------- RewardBench 2: Ties


def test_ties_score_by_hand():
    """Two ref/tied pairs and one tied prompt without its ref twin, worked by hand (see the comments)."""
    items = [
        tie_row("ref", 0, [2, 1, 0], 1),  # margin 1: accurate
        tie_row("tied", 0, [5, 4, 1], 2),  # spread 1, margin 3: accurate; 3 > 1; min(1, 3) = 1 is not > 1; tanh(0)
        tie_row("ref", 1, [0, 1], 1),  # margin -1: wrong
        tie_row("tied", 1, [2, 2, 0], 2),  # spread 0, margin 2: accurate; 2 > 0; min(-1, 2) = -1 < 0; -1/0 -> -1
        tie_row("tied", 2, [3, 1, 2], 2),  # margin -1: wrong; no ref:2, so it counts in the tied accuracy only
    ]
    ties = reward_bench_2_scores(items)["subsets"]["Ties"]
    assert ties["tied_accuracy"] == pytest.approx(100 * 2 / 3)
    assert ties["ref_accuracy"] == pytest.approx(50.0)
    assert ties["correctness_preferred"] == pytest.approx(100.0)
    assert ties["correctness_preferred_hard"] == pytest.approx(0.0)
    assert ties["margin_score"] == pytest.approx(100 * (math.tanh(0.0) - 1.0) / 2)
    assert ties["num_pairs"] == 2 and ties["num_prompts"] == 5
    expected = 0.30 * (2 / 3) + 0.30 * 0.5 + 0.20 * 1.0 + 0.20 * 0.0 + 0.01 * -0.5
    assert ties["score"] == pytest.approx(100 * expected)


@pytest.mark.parametrize("ref_margin, term", [(0.5, 1.0), (-0.5, -1.0), (0.0, 0.0)])
def test_ties_zero_spread_among_correct_answers(ref_margin, term):
    """With equally scored correct answers the margin ratio is +-inf (tanh -> +-1), or 0/0, which counts 0."""
    parts = ties_score({("ref", 7): ([ref_margin, 0.0], 1), ("tied", 7): ([1.0, 1.0, 0.0], 2)})
    assert parts["margin_score"] == 100 * term
    assert parts["correctness_preferred"] == 100.0  # tied margin 1 > spread 0
    assert parts["correctness_preferred_hard"] == (100.0 if ref_margin > 0 else 0.0)


def test_ties_without_any_ref_tied_pair_is_an_error():
    with pytest.raises(ValueError, match="no prompt n with both a `ref:n` and a `tied:n`"):
        reward_bench_2_scores([tie_row("tied", 0, [2, 2, 0], 2), tie_row("ref", 1, [1, 0], 1)])


# ---------------------------------------------------------------- RewardBench (v1)


def test_v1_accuracy_is_strict_and_sections_use_the_official_example_counts():
    items = [
        pair("alpacaeval-easy", 0, 1.0, 0.0),
        pair("alpacaeval-easy", 1, 0.5, 0.5),  # a tie is wrong
        pair("mt-bench-easy", 2, 1.0, 0.0),
        pair("math-prm", 3, 0.0, 1.0),
        pair("hep-cpp", 4, 1.0, 0.0),
    ]
    result = reward_bench_scores(items)
    assert result["subsets"]["alpacaeval-easy"] == {"accuracy": 50.0, "num_pairs": 2}
    # Weights are the official counts (100 and 28), not the 2 and 1 pairs present.
    assert result["sections"]["Chat"]["score"] == pytest.approx((50 * 100 + 100 * 28) / 128)
    # math-prm weighs 984 (its 447 prompts count as much as the 6 x 164 code prompts).
    assert result["sections"]["Reasoning"]["score"] == pytest.approx(100 * 164 / (984 + 164))
    assert result["sections_scored"] == ["Chat", "Reasoning"]
    assert result["sections_missing"] == ["Chat Hard", "Safety"]
    assert result["overall"] == pytest.approx((result["sections"]["Chat"]["score"] + 100 * 164 / 1148) / 2)
    assert "llmbar-natural" in result["subsets_missing"] and len(result["subsets_missing"]) == 19
    assert sum(REWARD_BENCH_EXAMPLE_COUNTS[s] for s in REWARD_BENCH_SECTIONS["Reasoning"]) == 2 * 984


def test_v1_overall_is_the_mean_of_the_four_sections():
    items = [pair(members[0], n, float(n % 2), 0.5) for n, members in enumerate(REWARD_BENCH_SECTIONS.values())]
    result = reward_bench_scores(items)
    assert [result["sections"][s]["score"] for s in REWARD_BENCH_SECTIONS] == [0.0, 100.0, 0.0, 100.0]
    assert result["overall"] == 50.0 and result["sections_missing"] == []


# ---------------------------------------------------------------- bad input: one clear line each


@pytest.mark.parametrize(
    "items, message",
    [
        ([bon("Coding", "0", [1, 0])], "unknown RewardBench 2 subset 'Coding'; expected one of"),
        ([{**bon("Math", "0", [1, 0]), "num_correct": 0}], "num_correct=0 with 2 scores; it needs 1 <= num_correct"),
        ([{**bon("Math", "0", [1, 0]), "num_correct": 2}], "num_correct=2 with 2 scores"),
        ([{**bon("Math", "0", [1, 0]), "num_correct": 1.5}], "num_correct=1.5"),
        ([{**bon("Math", "0", [1, 0, 0]), "num_correct": 2}], "outside Ties a RewardBench 2 prompt has exactly one"),
        ([bon("Math", "0", [1, float("nan")])], "A reward of RewardBench 2 item .* is NaN"),
        ([bon("Math", "0", [1, 0]), bon("Math", "0", [0, 1])], "appears twice"),
        ([tie_row("ref", 0, [1, 0], 1), {**tie_row("ref", 0, [1, 0], 1), "id": "ref:00"}], "repeats Ties prompt"),
        ([{**tie_row("ref", 0, [1, 0], 1), "id": "0"}], "Ties ids are `ref:<n>` or `tied:<n>`"),
        ([tie_row("tied", 0, [1, 0], 1)], "tied prompts have >= 2"),
        ([{"subset": "Math", "id": "0", "num_correct": 1}], "has no `scores` field"),
        ([], "No RewardBench 2 items"),
    ],
)
def test_reward_bench_2_bad_input(items, message):
    with pytest.raises(ValueError, match=message):
        reward_bench_2_scores(items)


@pytest.mark.parametrize(
    "items, message",
    [
        ([pair("chat", 0, 1, 0)], "unknown RewardBench subset 'chat'"),
        ([pair("hep-go", 0, float("nan"), 0)], "`score_chosen` of RewardBench item .* is NaN"),
        ([pair("hep-go", 0, 1, 0), pair("hep-go", 0, 0, 1)], "appears twice"),
        ([], "No RewardBench pairs"),
    ],
)
def test_reward_bench_v1_bad_input(items, message):
    with pytest.raises(ValueError, match=message):
        reward_bench_scores(items)


# ---------------------------------------------------------------- evaluate modules


def test_evaluate_modules_give_the_functions_results():
    items = [bon("Math", "0", [3, 1, 2, 0]), bon("Math", "1", [1, 1, 0, 0]), tie_row("ref", 0, [2, 1], 1)]
    items += [tie_row("tied", 0, [3, 2, 1], 2)]
    columns = {key: [item[key] for item in items] for key in ("subset", "id", "scores", "num_correct")}
    assert evaluate.load(metric_path("reward_bench_2")).compute(**columns) == reward_bench_2_scores(items)

    pairs = [pair("hep-go", 0, 1.0, 0.0), pair("math-prm", 1, 0.0, 1.0), pair("donotanswer", 2, 0.2, 0.1)]
    columns = {key: [item[key] for item in pairs] for key in ("subset", "id", "score_chosen", "score_rejected")}
    assert evaluate.load(metric_path("reward_bench")).compute(**columns) == reward_bench_scores(pairs)


# ---------------------------------------------------------------- loaders


def test_loaders_read_the_official_layouts(tmp_path):
    prompts = load_reward_bench_2(RB2_FILE)
    assert prompts.column_names == ["subset", "id", "prompt", "chosen", "rejected", "num_correct"]
    assert len(prompts) == 10 and prompts[6]["id"] == "ref:0" and prompts[7]["num_correct"] == 4

    # A snapshot of the Hub repository: data/<split>-00000-of-00001.parquet; other splits are not read.
    rows = [json.loads(line) for line in RB2_FILE.read_text().splitlines()]
    (tmp_path / "rb2" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "rb2/data/test-00000-of-00001.parquet")
    assert load_reward_bench_2(tmp_path / "rb2").to_list() == prompts.to_list()
    assert load_reward_bench_2(tmp_path / "rb2/data/test-00000-of-00001.parquet").to_list() == prompts.to_list()

    pairs = load_reward_bench(RB1_FILE)
    assert pairs.column_names == ["subset", "id", "prompt", "chosen", "rejected"] and len(pairs) == 8
    (tmp_path / "rb1" / "data").mkdir(parents=True)
    shutil.copy(RB1_FILE, tmp_path / "rb1/data/filtered-00000-of-00001.jsonl")
    (tmp_path / "rb1/data/raw-00000-of-00001.jsonl").write_text('{"not": "read"}\n')
    assert load_reward_bench(tmp_path / "rb1").to_list() == pairs.to_list()
    with pytest.raises(ValueError, match="holds no RewardBench 2 files of split 'test'"):
        load_reward_bench_2(tmp_path / "rb1")


def test_hub_names_load_the_official_splits(monkeypatch):
    calls = []
    rows = {
        "allenai/reward-bench-2": [json.loads(RB2_FILE.read_text().splitlines()[0])],
        "allenai/reward-bench": [json.loads(RB1_FILE.read_text().splitlines()[0])],
    }

    def fake_load_dataset(repo_id, split):
        calls.append((repo_id, split))
        return datasets.Dataset.from_list(rows[repo_id])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_benchmark("reward-bench-2")[0]["subset"] == "Factuality"
    assert load_benchmark("reward-bench")[0]["subset"] == "alpacaeval-easy"
    assert calls == [("allenai/reward-bench-2", "test"), ("allenai/reward-bench", "filtered")]


def test_limit_keeps_whole_ties_prompts():
    prompts = load_reward_bench_2(RB2_FILE)
    limited = limit_per_group(prompts, "reward-bench-2", 1)
    assert limited["id"] == ["0", "2", "3", "4", "5", "ref:0", "tied:0"]
    assert [p["subset"] for p in limit_per_group(load_reward_bench(RB1_FILE), "reward-bench", 1)].count(
        "alpacaeval-easy"
    ) == 1


@pytest.mark.parametrize(
    "benchmark, change, message",
    [
        ("reward-bench-2", {"subset": "Chat"}, "unknown subset 'Chat'"),
        ("reward-bench-2", {"num_correct": 2}, "num_correct must be the number of chosen ones"),
        ("reward-bench-2", {"rejected": "Lyon."}, "lists of strings"),
        ("reward-bench-2", {"chosen": ["a", "b"], "num_correct": 2}, "outside Ties it has exactly one"),
        ("reward-bench-2", {"subset": "Ties"}, "Ties ids are `ref:<n>` or `tied:<n>`"),
        ("reward-bench", {"subset": "Chat Hard"}, "not one of the 23 scored subsets"),
        ("reward-bench", {"chosen": ["a"]}, "must be strings"),
    ],
)
def test_bad_data_gives_one_clear_line(tmp_path, capsys, benchmark, change, message):
    row = json.loads((RB2_FILE if benchmark == "reward-bench-2" else RB1_FILE).read_text().splitlines()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**row, **change}) + "\n")
    with pytest.raises(ValueError, match=message):
        load_benchmark(benchmark, path)
    argv = ["--model", "length-baseline", "--benchmark", benchmark, "--data", str(path)]
    assert main(argv + ["--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("adajudge evaluate: error:") and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- adajudge evaluate


def read_report(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    records = [json.loads(line) for line in (folder / "rewards.jsonl").read_text().splitlines()]
    return metrics, records


def test_length_baseline_on_the_fixture_gives_the_worked_scores(tmp_path, capsys):
    out = tmp_path / "rb2"
    argv = ["--model", "length-baseline", "--benchmark", "reward-bench-2", "--data", str(RB2_FILE)]
    assert main(argv + ["--output-dir", str(out)]) == 0
    assert "RewardBench 2 overall" in capsys.readouterr().out
    metrics, records = read_report(out)
    subsets = metrics["metrics"]["subsets"]
    # See the comments in the fixture: longer wins, 1/2 and 1/4 for ties at the top.
    assert {name: subsets[name]["score"] for name in ("Factuality", "Precise IF", "Math", "Safety", "Focus")} == {
        "Factuality": 50.0,
        "Precise IF": 50.0,
        "Math": 100.0,
        "Safety": 0.0,
        "Focus": 25.0,
    }
    # Ties: no prompt is accurate and no margin beats the spread; only the tanh term is left, and it is negative.
    ties = 0.01 * (math.tanh(-8 / 3 - 1) + math.tanh(-2 / 2 - 1)) / 2
    assert subsets["Ties"]["score"] == pytest.approx(100 * ties)
    assert metrics["metrics"]["overall"] == pytest.approx((225 + 100 * ties) / 6)
    assert metrics["metrics"] == benchmark_metrics("reward-bench-2", records)  # the JSONL reproduces the JSON
    assert records[7] == {"subset": "Ties", "id": "tied:0", "num_correct": 4, "scores": [3, 4, 6, 5, 5, 5]}

    out = tmp_path / "rb1"
    argv = ["--model", "length-baseline", "--benchmark", "reward-bench", "--data", str(RB1_FILE)]
    assert main(argv + ["--output-dir", str(out)]) == 0
    metrics, records = read_report(out)
    sections = {name: values["score"] for name, values in metrics["metrics"]["sections"].items()}
    expected = {"Chat": 9000 / 140, "Chat Hard": 0.0, "Safety": 10000 / 350, "Reasoning": 16400 / 1148}
    assert sections == pytest.approx(expected)
    assert metrics["metrics"]["overall"] == pytest.approx(sum(expected.values()) / 4)
    assert metrics["metrics"] == benchmark_metrics("reward-bench", records)
    assert [r["correct"] for r in records] == [True, False, True, False, True, False, False, True]


def test_judge_report_on_reward_bench_2_with_and_without_shared_prompts(judge_folder, tmp_path):
    argv = ["--model", str(judge_folder), "--benchmark", "reward-bench-2", "--data", str(RB2_FILE)]
    assert main(argv + ["--output-dir", str(tmp_path / "plain")]) == 0
    assert main(argv + ["--output-dir", str(tmp_path / "shared"), "--share-prompts"]) == 0
    metrics, records = read_report(tmp_path / "plain")
    shared_metrics, shared_records = read_report(tmp_path / "shared")

    assert metrics["num_items"] == 10 and metrics["scoring"]["num_responses"] == 46  # every completion once
    assert shared_metrics["scoring"]["num_tokens"] < metrics["scoring"]["num_tokens"]  # prompts encoded once
    for plain, shared in zip(records, shared_records):
        assert shared["scores"] == pytest.approx(plain["scores"], abs=1e-4)
    assert metrics["metrics"] == benchmark_metrics("reward-bench-2", records)
    assert all(len(r["routing_weights"]) == len(r["scores"]) == len(r["depth_weights"]) for r in records)

    routing = json.loads((tmp_path / "plain" / "routing.json").read_text())
    assert routing == routing_report("reward-bench-2", records, routing["experts"], routing["depth_candidates"])
    assert routing["group_by"] == "subset"
    assert list(routing["groups"]) == ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties", "all"]
    assert routing["groups"]["Ties"]["num_responses"] == 22 and routing["groups"]["all"]["num_responses"] == 46
    assert "| subset | responses | last | mean | attention |" in (tmp_path / "plain" / "routing.md").read_text()
    assert (tmp_path / "plain" / "routing.png").read_bytes().startswith(PNG_SIGNATURE)


def test_judge_report_on_reward_bench_v1_routes_per_subset(judge_folder, tmp_path):
    argv = ["--model", str(judge_folder), "--benchmark", "reward-bench", "--data", str(RB1_FILE), "--limit", "1"]
    assert main(argv + ["--output-dir", str(tmp_path)]) == 0
    metrics, records = read_report(tmp_path)
    assert metrics["num_items"] == 7  # one pair of each of the 7 subsets present
    assert metrics["metrics"] == benchmark_metrics("reward-bench", records)
    routing = json.loads((tmp_path / "routing.json").read_text())
    assert list(routing["groups"])[:2] == ["alpacaeval-easy", "mt-bench-med"]
    assert routing["groups"]["all"]["num_responses"] == 14


def test_report_scores_accepts_rewards_computed_elsewhere(tmp_path):
    """Rewards from anywhere (cached features, another process) in `benchmark_examples` order give the report."""
    prompts = load_reward_bench_2(RB2_FILE)
    _, responses = benchmark_examples("reward-bench-2", prompts)
    rewards = torch.tensor([-float(len(response)) for response in responses], dtype=torch.float64)  # shorter wins
    result = report_scores("reward-bench-2", prompts, ScoringOutput(rewards=rewards), {"model": "short"}, tmp_path)
    assert result.metrics["subsets"]["Factuality"]["score"] == 25.0  # 0, and 1/2: "Four." ties "Five." at the top
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == result.metrics
    assert not (tmp_path / "routing.json").exists()  # no routing weights, no routing report

    length = evaluate_length_baseline("reward-bench-2", prompts)
    flipped = reward_bench_2_scores([{**r, "scores": [-s for s in r["scores"]]} for r in length.records])
    assert flipped == result.metrics


# ---------------------------------------------------------------- model card


def test_model_card_lists_reward_bench_2_under_the_official_subset_names(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    from adajudge_hf import AdaJudgeForRewardModeling
    from adajudge_hf.checkpoint import save_judge
    from adajudge_hf.hub import check_card, render_card
    from adajudge_hf.testing import save_tiny_causal_lm

    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, num_refinement_blocks=1, head_hidden_size=16).eval()
    checkpoint = save_judge(judge, tmp_path / "judge", form="full", tokenizer=AutoTokenizer.from_pretrained(backbone))
    for benchmark, data in (("reward-bench-2", RB2_FILE), ("reward-bench", RB1_FILE)):
        argv = ["--model", str(checkpoint), "--benchmark", benchmark, "--data", str(data)]
        assert main(argv + ["--output-dir", str(tmp_path / "eval" / benchmark)]) == 0

    card = render_card(checkpoint, tmp_path / "eval", repo_id="org/judge", base_model="org/tiny", license="mit")
    check_card(card)
    results = {(r.dataset_type, r.metric_name): r.metric_value for r in ModelCard(str(card)).data.eval_results}
    rb2 = json.loads((tmp_path / "eval/reward-bench-2/metrics.json").read_text())["metrics"]
    assert results[("allenai/reward-bench-2", "Score")] == round(rb2["overall"], 2)
    for subset in ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"):
        assert results[("allenai/reward-bench-2", subset)] == round(rb2["subsets"][subset]["score"], 2)
    rb1 = json.loads((tmp_path / "eval/reward-bench/metrics.json").read_text())["metrics"]
    assert results[("allenai/reward-bench", "Score (7 of 23 subsets)")] == round(rb1["overall"], 2)
    assert results[("allenai/reward-bench", "Chat Hard")] == round(rb1["sections"]["Chat Hard"]["score"], 2)
    assert f"| **overall** | **{rb2['overall']:.1f}** | 10 |" in card.text
    assert f"| Precise IF | {rb2['subsets']['Precise IF']['score']:.1f} | 1 |" in card.text
    assert "Not scored: the subset(s) alpacaeval-length, alpacaeval-hard, mt-bench-easy," in card.text
