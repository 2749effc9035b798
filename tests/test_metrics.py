"""Official metric functions against hand-worked cases, and the `evaluate` modules that wrap them."""

import math

import evaluate
import pytest

from adajudge_hf.evaluation import (
    judgebench_scores,
    metric_path,
    pairwise_accuracy,
    rm_bench_scores,
    wilson_interval,
)


def rm_item(domain, item_id, chosen, rejected):
    return {"domain": domain, "id": item_id, "score_chosen": chosen, "score_rejected": rejected}


# chosen style i beats rejected style j iff i >= j: the fancier response always wins, like a length-biased model.
STYLE_BIASED = ([1, 5, 9], [0, 4, 8])


def test_rm_bench_triangle_orientation():
    """Hard is the upper triangle (plain chosen vs fancy rejected): a style-biased model scores 0 there."""
    scores = rm_bench_scores([rm_item("chat", 0, *STYLE_BIASED)])
    chat = scores["domains"]["chat"]
    assert chat["matrix"] == [[100.0, 0.0, 0.0], [100.0, 100.0, 0.0], [100.0, 100.0, 100.0]]
    assert (chat["hard"], chat["normal"], chat["easy"]) == (0.0, 100.0, 100.0)
    assert chat["score"] == pytest.approx(200 / 3)


def test_rm_bench_ties_count_as_wrong():
    chat = rm_bench_scores([rm_item("chat", 0, [2, 2, 2], [2, 2, 2])])["domains"]["chat"]
    assert chat["matrix"] == [[0.0] * 3] * 3
    assert chat["score"] == 0.0


def test_rm_bench_matrix_is_a_mean_over_prompts():
    chat = rm_bench_scores([rm_item("chat", 0, *STYLE_BIASED), rm_item("chat", 1, [9, 9, 9], [0, 0, 0])])
    chat = chat["domains"]["chat"]
    assert chat["matrix"] == [[100.0, 50.0, 50.0], [100.0, 100.0, 50.0], [100.0, 100.0, 100.0]]
    assert (chat["hard"], chat["normal"], chat["easy"], chat["num_prompts"]) == (50.0, 100.0, 100.0, 2)


def test_rm_bench_pools_safety_prompts_into_one_matrix():
    """Two right safety-refuse prompts and one wrong safety-response prompt: 2/3 of the prompts, not (100 + 0) / 2."""
    items = [
        rm_item("safety-refuse", 0, [1, 1, 1], [0, 0, 0]),
        rm_item("safety-refuse", 1, [1, 1, 1], [0, 0, 0]),
        rm_item("safety-response", 0, [0, 0, 0], [1, 1, 1]),  # same id, other source domain: a different prompt
    ]
    scores = rm_bench_scores(items)
    assert scores["domains_scored"] == ["safety"]
    assert scores["domains"]["safety"]["num_prompts"] == 3
    assert scores["domains"]["safety"]["score"] == pytest.approx(200 / 3)


def test_rm_bench_keys_items_by_domain_and_id():
    items = [rm_item("chat", 7, [1, 1, 1], [0, 0, 0]), rm_item("code", 7, [0, 0, 0], [1, 1, 1])]
    scores = rm_bench_scores(items)
    assert scores["num_prompts"] == 2
    assert (scores["domains"]["chat"]["score"], scores["domains"]["code"]["score"]) == (100.0, 0.0)
    with pytest.raises(ValueError, match=r"\('chat', 7\) appears twice"):
        rm_bench_scores(items + [rm_item("chat", 7, [1, 1, 1], [0, 0, 0])])


def test_rm_bench_overall_and_difficulties_average_the_domains_present():
    items = [rm_item("chat", 0, *STYLE_BIASED), rm_item("code", 0, [1, 1, 1], [0, 0, 0])]
    scores = rm_bench_scores(items)
    assert scores["domains_scored"] == ["chat", "code"]
    assert scores["domains_missing"] == ["math", "safety"]
    assert scores["overall"] == pytest.approx((200 / 3 + 100) / 2)
    assert (scores["hard"], scores["normal"], scores["easy"]) == (50.0, 100.0, 100.0)
    assert scores["overall"] == pytest.approx((scores["hard"] + scores["normal"] + scores["easy"]) / 3)


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "No RM-Bench items"),
        ([rm_item("chat", 0, [1, 2], [0, 0, 0])], "needs 3"),
        ([rm_item("reasoning", 0, [1, 1, 1], [0, 0, 0])], "Unknown RM-Bench domain 'reasoning'"),
        ([rm_item("chat", 0, [1, math.nan, 1], [0, 0, 0])], "NaN"),
        ([{"domain": "chat", "id": 0, "score_chosen": [1, 1, 1]}], "no `score_rejected` field"),
    ],
)
def test_rm_bench_rejects_bad_items(items, message):
    with pytest.raises(ValueError, match=message):
        rm_bench_scores(items)


def jb_item(source, label, score_a, score_b, **extra):
    return {"source": source, "label": label, "score_A": score_a, "score_B": score_b, **extra}


def test_judgebench_tie_falls_to_b():
    assert judgebench_scores([jb_item("livecodebench", "B>A", 1.0, 1.0)])["overall"] == 100.0
    assert judgebench_scores([jb_item("livecodebench", "A>B", 1.0, 1.0)])["overall"] == 0.0


def test_judgebench_overall_is_micro_averaged():
    items = [jb_item(f"mmlu-pro-{subject}", "A>B", 2.0, 1.0) for subject in ("law", "math", "physics")]
    items.append(jb_item("livebench-math", "A>B", 0.0, 1.0))
    scores = judgebench_scores(items)
    assert scores["categories"] == {
        "knowledge": {"accuracy": 100.0, "num_pairs": 3},
        "math": {"accuracy": 0.0, "num_pairs": 1},
    }
    assert scores["overall"] == 75.0  # 3 of 4 pairs; the mean of the categories would be 50
    assert scores["num_pairs"] == 4


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "No JudgeBench pairs"),
        ([jb_item("arena-hard", "A>B", 1, 0)], "Unknown JudgeBench source 'arena-hard'"),
        ([jb_item("livecodebench", "A=B", 1, 0)], "label 'A=B'"),
        ([jb_item("livecodebench", "A>B", 1, 0, pair_id="x")] * 2, "pair_id 'x' appears twice"),
    ],
)
def test_judgebench_rejects_bad_items(items, message):
    with pytest.raises(ValueError, match=message):
        judgebench_scores(items)


def test_pairwise_accuracy_counts_ties_as_wrong():
    scores = pairwise_accuracy([2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 2.0, 5.0])
    assert scores["accuracy"] == 50.0
    assert (scores["num_pairs"], scores["num_ties"]) == (4, 1)
    assert scores["mean_margin"] == -0.75
    assert scores["ci_low"] < 50.0 < scores["ci_high"]


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(0.40383, abs=1e-5), pytest.approx(0.59617, abs=1e-5))
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)  # stays inside [0, 1]
    assert wilson_interval(50, 100, confidence=0.99)[0] < low  # wider at a higher confidence


@pytest.mark.parametrize(
    "chosen, rejected, kwargs, message",
    [
        ([1.0], [0.0, 1.0], {}, "must pair up"),
        ([], [], {}, "No preference pairs"),
        ([1.0], [0.0], {"confidence": 95}, "confidence"),
    ],
)
def test_pairwise_accuracy_rejects_bad_input(chosen, rejected, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pairwise_accuracy(chosen, rejected, **kwargs)


def test_evaluate_modules_load_offline_and_match_the_functions(monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    items = [rm_item("chat", 0, *STYLE_BIASED), rm_item("safety-refuse", 0, [0.1, 0.2, 0.3], [0.1, 0.2, 0.30001])]
    rm_bench = evaluate.load(metric_path("rm_bench"))
    columns = {key: [item[key] for item in items] for key in items[0]}
    assert rm_bench.compute(**columns) == rm_bench_scores(items)

    pairs = [jb_item("mmlu-pro-law", "A>B", 0.5, 0.25), jb_item("livecodebench", "B>A", 1.0, 1.0)]
    judgebench = evaluate.load(metric_path("judgebench"))
    judgebench.add_batch(**{key: [pair[key] for pair in pairs] for key in pairs[0]})
    assert judgebench.compute() == judgebench_scores(pairs)

    accuracy = evaluate.load(metric_path("pairwise_accuracy"))
    expected = pairwise_accuracy([1.0, 0.3], [0.5, 0.3], confidence=0.9)
    assert accuracy.compute(chosen_rewards=[1.0, 0.3], rejected_rewards=[0.5, 0.3], confidence=0.9) == expected


def test_metric_path_names_the_shipped_metrics():
    with pytest.raises(ValueError, match="shipped metrics"):
        metric_path("accuracy")
