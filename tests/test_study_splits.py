"""Leak-free study splits: no conversation opening and no exact pair in two splits, duplicates dropped."""

import importlib.util
from pathlib import Path

import pytest

from adajudge_hf.comparison import conversation_opening, pair_key, split_by_opening


ROOT = Path(__file__).resolve().parent.parent


def pair(opening: str, turn: str = "", chosen: str = "yes", rejected: str = "no") -> dict:
    prompt = [{"role": "user", "content": opening}] + (
        [{"role": "assistant", "content": "ok"}, {"role": "user", "content": turn}] if turn else []
    )
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def assert_leak_free(splits: dict[str, list[int]], pairs: list[dict]) -> None:
    seen_openings, seen_pairs = {}, {}
    for name, members in splits.items():
        for index in members:
            opening, key = conversation_opening(pairs[index]["prompt"]), pair_key(pairs[index])
            assert seen_openings.setdefault(opening, name) == name, f"opening {opening!r} in two splits"
            assert key not in seen_pairs, f"pair {index} duplicates pair {seen_pairs.get(key)}"
            seen_pairs[key] = index


def test_continuations_of_one_conversation_stay_in_one_split_and_duplicates_are_dropped():
    pairs = []
    for i in range(60):
        pairs.append(pair(f"Question {i}?"))
        pairs.append(pair(f"  question {i}? ", turn="and then?"))  # the same opening, spaced and cased differently
    pairs += [pair("Question 3?"), pair("Question 7?")]  # exact duplicates of earlier pairs
    sources = ["a"] * len(pairs)
    splits, dropped = split_by_opening(pairs, sources, {"held_out": {"a": 40}, "validation": {"a": 20}}, salt="s")
    assert dropped == 2
    assert_leak_free(splits, pairs)
    assert sum(len(m) for m in splits.values()) == len(pairs) - 2
    assert len(splits["held_out"]) == 40 and len(splits["validation"]) == 20  # groups of two fill even quotas


def test_the_split_does_not_depend_on_input_order():
    pairs = [pair(f"Q{i}") for i in range(50)]
    quotas = {"held_out": {"a": 10}}
    forward, _ = split_by_opening(pairs, ["a"] * 50, quotas, salt="x")
    backward, _ = split_by_opening(pairs[::-1], ["a"] * 50, quotas, salt="x")
    assert {pair_key(pairs[i]) for i in forward["held_out"]} == {
        pair_key(pairs[::-1][i]) for i in backward["held_out"]
    }


def load_quality_script():
    spec = importlib.util.spec_from_file_location("quality_study", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared_data
def test_the_declared_study_splits_share_no_opening_and_no_pair():
    quality = load_quality_script()
    protocol = quality.load_protocol(quality.PROTOCOL)
    splits = quality.study_splits(protocol)
    pairs = [p for name in ("train", "validation", "held_out") for _, p in splits[name]]
    names = [name for name in ("train", "validation", "held_out") for _ in splits[name]]
    assert_leak_free({n: [i for i, m in enumerate(names) if m == n] for n in set(names)}, pairs)
    assert len(splits["validation"]) >= 300
    declared = protocol["data"]["held_out"]
    for source, count in declared.items():
        assert sum(1 for s, _ in splits["held_out"] if s == source) == count
    assert splits["duplicates_dropped"] == 5  # dpo_en_demo repeats 5 pairs; the HH pairs are unique
