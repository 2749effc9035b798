"""The preference pairs shipped inside the package: TRL format, a deterministic held-out split, licence shipped."""

import gzip
import importlib.util
import json
from importlib.resources import files
from pathlib import Path

import pytest

from adajudge_hf.embedded_data import EMBEDDED_PREFERENCES, load_embedded_preferences


DATA = files("adajudge_hf") / "data"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_embedded_data.py"


def rows_key(dataset) -> list[str]:
    return [json.dumps(row, sort_keys=True) for row in dataset]


def load_script():
    """`scripts/make_embedded_data.py`, the maintainer script that builds the shipped file (not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_embedded_data", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def all_pairs() -> list[dict]:
    with gzip.open(DATA / EMBEDDED_PREFERENCES, "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def test_file_is_small_and_has_thousands_of_pairs(all_pairs):
    assert (DATA / EMBEDDED_PREFERENCES).stat().st_size < 1_000_000
    assert len(all_pairs) == 2299


def test_pairs_are_trl_conversational_with_valid_roles(all_pairs):
    for pair in all_pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"}
        roles = [message["role"] for message in pair["prompt"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert all(message["content"] for message in pair["prompt"])
        for response in (pair["chosen"], pair["rejected"]):
            assert len(response) == 1 and response[0]["role"] == "assistant"
            assert response[0]["content"] and response[0]["content"] == response[0]["content"].strip()
        assert pair["chosen"] != pair["rejected"]


def test_split_is_deterministic_and_disjoint():
    train, test = load_embedded_preferences("train"), load_embedded_preferences("test")
    assert (len(train), len(test)) == (2299 - 500, 500)
    assert set(rows_key(train)).isdisjoint(rows_key(test))
    assert rows_key(load_embedded_preferences("test")) == rows_key(test)
    assert rows_key(load_embedded_preferences("test", seed=1)) != rows_key(test)
    assert len(load_embedded_preferences("test", eval_size=100)) == 100


def test_split_features_match_the_reward_trainer_format():
    example = load_embedded_preferences("test", eval_size=10)[0]
    assert example["prompt"][-1]["role"] == "user"
    assert example["chosen"][0]["role"] == example["rejected"][0]["role"] == "assistant"


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"split": "validation"}, "use 'train' or 'test'"), ({"eval_size": 0}, "between 1 and")]
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_embedded_preferences(**kwargs)


def test_licence_and_attribution_are_shipped():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "MIT License" in readme and "Copyright (c) 2022 Anthropic" in readme
    assert "anthropics/hh-rlhf" in readme and "2204.05862" in readme


def test_conversion_drops_malformed_transcripts():
    script = load_script()
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke, Human: please"
    kept, outcome = script.convert_pair(
        {"chosen": prompt + "\n\nAssistant: A pun.", "rejected": prompt + "\n\nAssistant: No."}
    )
    assert outcome == "kept"
    assert kept["prompt"][-1] == {"role": "user", "content": "Tell me a joke, Human: please"}
    assert kept["chosen"] == [{"role": "assistant", "content": "A pun."}]
    cases = {
        "turns do not alternate user/assistant": prompt + "\n\nAssistant: A.\n\nAssistant: B.",
        "final turn is not the assistant's": prompt,
        "empty response": prompt + "\n\nAssistant:",
    }
    for reason, chosen in cases.items():
        assert script.convert_pair({"chosen": chosen, "rejected": prompt + "\n\nAssistant: No."}) == (None, reason)
    other_prompt = "\n\nHuman: Something else\n\nAssistant: No."
    assert script.convert_pair({"chosen": prompt + "\n\nAssistant: No.", "rejected": other_prompt})[1] == (
        "chosen and rejected prompts differ"
    )
    same = prompt + "\n\nAssistant: Same."
    assert script.convert_pair({"chosen": same, "rejected": same}) == (None, "identical responses")


@pytest.mark.shared_data
def test_script_regenerates_the_shipped_file(shared_benchmarks, tmp_path):
    output = tmp_path / EMBEDDED_PREFERENCES
    load_script().main([str(shared_benchmarks / "hh-rlhf" / "harmless-base_test.jsonl.gz"), "--output", str(output)])
    assert output.read_bytes() == (DATA / EMBEDDED_PREFERENCES).read_bytes()


def test_script_regenerates_the_start_of_the_shipped_file_from_the_slice(benchmark_slices, tmp_path):
    """The conversion keeps the input order, so the slice (the first 40 lines of the source, then a pair with an
    empty response) regenerates the first pairs of the shipped file exactly."""
    output = tmp_path / EMBEDDED_PREFERENCES
    load_script().main([str(benchmark_slices / "hh-rlhf" / "harmless-base_test.jsonl.gz"), "--output", str(output)])
    with gzip.open(output, "rt", encoding="utf-8") as stream:
        regenerated = stream.read().splitlines()
    with gzip.open(DATA / EMBEDDED_PREFERENCES, "rt", encoding="utf-8") as stream:
        shipped = stream.read().splitlines()
    assert len(regenerated) == 40  # the pair with an empty response is dropped
    assert regenerated == shipped[: len(regenerated)]
