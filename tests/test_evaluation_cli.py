"""`adajudge evaluate` and the benchmark loaders: reports written and consistent, official figures, clear errors."""

import json

import datasets
import pytest
import torch
from conftest import randomize_head
from transformers import AutoModelForSequenceClassification

from adajudge_hf.evaluation import (
    benchmark_metrics,
    evaluate_length_baseline,
    evaluate_model,
    load_benchmark,
    load_judgebench,
    load_preference_pairs,
    load_rm_bench,
    parse_hh_rlhf_transcript,
    routing_report,
)
from adajudge_hf.evaluation.cli import main
from adajudge_hf.testing import make_tiny_backbone_config


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory, tiny_tokenizer):
    from adajudge_hf import AdaJudgeForRewardModeling
    from adajudge_hf.testing import make_tiny_judge_config

    torch.manual_seed(0)
    judge = randomize_head(AdaJudgeForRewardModeling(make_tiny_judge_config(tiny_tokenizer)), seed=1)
    folder = tmp_path_factory.mktemp("judge")
    judge.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stock_rm_folder(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    config = make_tiny_backbone_config(tiny_tokenizer)
    config.num_labels = 1
    folder = tmp_path_factory.mktemp("stock-rm")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def read_report(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    records = [json.loads(line) for line in (folder / "rewards.jsonl").read_text().splitlines()]
    return metrics, records


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rm_bench_report_is_written_and_consistent(judge_folder, shared_benchmarks, tmp_path, tiny_tokenizer):
    out = tmp_path / "report"
    argv = ["--model", str(judge_folder), "--benchmark", "rm-bench", "--data", str(shared_benchmarks / "rm-bench")]
    assert main(argv + ["--output-dir", str(out), "--limit", "2", "--max-length", "96"]) == 0

    metrics, records = read_report(out)
    assert metrics["benchmark"] == "rm-bench" and metrics["model"] == str(judge_folder)
    assert metrics["num_items"] == len(records) == 6  # 2 prompts of each of chat, code, safety
    assert metrics["metrics"] == benchmark_metrics("rm-bench", records)  # the JSONL reproduces the JSON
    assert metrics["metrics"]["domains_scored"] == ["chat", "code", "safety"]
    assert metrics["metrics"]["domains_missing"] == ["math"]
    assert metrics["scoring"]["num_responses"] == 36 and metrics["scoring"]["max_length"] == 96
    chat_ids = [item["id"] for item in json.loads((shared_benchmarks / "rm-bench/chat_filtered.json").read_text())]
    assert [(r["domain"], r["id"]) for r in records[:2]] == [("chat", chat_ids[0]), ("chat", chat_ids[1])]
    assert all(len(r["routing_weights_chosen"]) == 3 and len(r["depth_weights_rejected"]) == 3 for r in records)

    routing = json.loads((out / "routing.json").read_text())
    assert routing == routing_report("rm-bench", records, routing["experts"], routing["depth_candidates"])
    assert routing["experts"] == ["last", "mean", "attention"] and routing["depth_candidates"] == ["H(1)", "H(2)"]
    assert list(routing["groups"]) == ["chat", "code", "safety", "all"]
    assert routing["groups"]["all"]["num_responses"] == 36
    assert "| domain | responses | last | mean | attention |" in (out / "routing.md").read_text()
    assert (out / "routing.png").read_bytes().startswith(PNG_SIGNATURE)

    # The same judge in memory gives the same rewards as the saved folder.
    judge = AutoModelForSequenceClassification.from_pretrained(judge_folder)
    in_memory = evaluate_model(
        judge, tiny_tokenizer, "rm-bench", shared_benchmarks / "rm-bench", limit=2, max_length=96
    )
    assert in_memory.output_dir is None
    for loaded, saved in zip(in_memory.records, records):
        assert loaded["score_chosen"] == pytest.approx(saved["score_chosen"], abs=1e-5)


def test_heads_only_judge_folder_loads_through_load_judge(tmp_path, tiny_tokenizer):
    from adajudge_hf import AdaJudgeForRewardModeling
    from adajudge_hf.checkpoint import save_judge
    from adajudge_hf.testing import save_tiny_causal_lm

    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    judge = randomize_head(AdaJudgeForRewardModeling.from_backbone(backbone).eval(), seed=2)
    folder = save_judge(judge, tmp_path / "heads", form="heads", tokenizer=tiny_tokenizer)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}] * 3)
    out = tmp_path / "report"
    argv = ["--model", str(folder), "--benchmark", "pairs", "--data", str(pairs), "--output-dir", str(out)]
    assert main(argv) == 0
    expected = evaluate_model(judge, tiny_tokenizer, "pairs", pairs).records
    for saved, in_memory in zip(read_report(out)[1], expected):
        assert saved["score_chosen"] == pytest.approx(in_memory["score_chosen"], abs=1e-5)


def test_judgebench_report_of_a_stock_reward_model(stock_rm_folder, shared_benchmarks, tmp_path):
    out = tmp_path / "report"
    data = shared_benchmarks / "judgebench"
    argv = ["--model", str(stock_rm_folder), "--benchmark", "judgebench", "--data", str(data), "--split", "claude"]
    assert main(argv + ["--output-dir", str(out), "--limit", "2", "--max-length", "96"]) == 0

    metrics, records = read_report(out)
    assert len(records) == 8 and metrics["split"] == "claude"
    assert list(metrics["metrics"]["categories"]) == ["knowledge", "reasoning", "math", "coding"]
    assert metrics["metrics"] == benchmark_metrics("judgebench", records)
    for record in records:
        assert record["decision"] == ("A>B" if record["score_A"] > record["score_B"] else "B>A")
        assert record["correct"] == (record["decision"] == record["label"])
    assert not (out / "routing.json").exists()  # routing weights exist for AdaJudge judges only


def test_pairs_report_from_hh_rlhf_transcripts(judge_folder, shared_benchmarks, tmp_path):
    out = tmp_path / "report"
    data = shared_benchmarks / "hh-rlhf/harmless-base_test.jsonl.gz"
    argv = ["--model", str(judge_folder), "--benchmark", "pairs", "--data", str(data), "--output-dir", str(out)]
    assert main(argv + ["--limit", "6", "--max-length", "96"]) == 0

    metrics, records = read_report(out)
    assert metrics["command"].startswith("adajudge evaluate --model") and "--limit 6" in metrics["command"]
    assert metrics["metrics"]["num_pairs"] == 6
    assert metrics["metrics"] == benchmark_metrics("pairs", records)
    assert metrics["metrics"]["ci_low"] <= metrics["metrics"]["accuracy"] <= metrics["metrics"]["ci_high"]
    routing = json.loads((out / "routing.json").read_text())
    assert list(routing["groups"]) == ["all"]
    assert routing["groups"]["all"]["num_responses"] == 12  # each response counted once


def test_length_baseline_reproduces_the_documented_figures(shared_benchmarks, tmp_path, capsys):
    """The orientation check: the longer-wins baseline gets chat 37.4 / code 51.6 / safety 46.8, with a low hard."""
    out = tmp_path / "rm-bench"
    argv = ["--model", "length-baseline", "--benchmark", "rm-bench", "--output-dir", str(out)]
    assert main(argv + ["--data", str(shared_benchmarks / "rm-bench")]) == 0
    assert "RM-Bench overall 45.3 over 3 domain(s): chat 37.4, code 51.6, safety 46.8" in capsys.readouterr().out
    domains = read_report(out)[0]["metrics"]["domains"]
    expected = {"chat": (2.6, 28.4, 81.1), "code": (25.4, 51.9, 77.5), "safety": (10.0, 37.9, 92.4)}
    for domain, (hard, normal, easy) in expected.items():
        assert [round(domains[domain][key], 1) for key in ("hard", "normal", "easy")] == [hard, normal, easy]
    assert (domains["chat"]["num_prompts"], domains["code"]["num_prompts"], domains["safety"]["num_prompts"]) == (
        129,
        228,
        441,
    )

    judgebench = evaluate_length_baseline("judgebench", shared_benchmarks / "judgebench", split="gpt").metrics
    assert round(judgebench["overall"], 1) == 46.0 and judgebench["num_pairs"] == 350
    categories = {name: round(values["accuracy"], 1) for name, values in judgebench["categories"].items()}
    assert categories == {"knowledge": 44.2, "reasoning": 41.8, "math": 51.8, "coding": 54.8}


def test_rm_bench_loader_reads_the_official_layouts(shared_benchmarks, tmp_path):
    folder = load_rm_bench(shared_benchmarks / "rm-bench")
    assert len(folder) == 798 and folder.column_names == ["domain", "id", "prompt", "chosen", "rejected"]
    assert len(set(zip(folder["domain"], folder["id"]))) == 798  # 23 ids repeat across chat and code
    assert len(set(folder["id"])) < 798

    chat = load_rm_bench(shared_benchmarks / "rm-bench/chat_filtered.json")
    assert set(chat["domain"]) == {"chat"} and len(chat) == 129
    rows = [{**row, "domain": "chat"} for row in chat.to_list()[:3]]
    (tmp_path / "total_dataset.json").write_text(json.dumps(rows))
    (tmp_path / "chat_filtered.json").write_text(json.dumps(rows))  # the folder's total_dataset.json wins
    assert len(load_rm_bench(tmp_path)) == 3


def test_preference_pairs_loader_normalises_every_format(tmp_path, shared_benchmarks):
    transcript = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine."
    assert parse_hh_rlhf_transcript(transcript) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine."},
    ]
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": transcript, "rejected": transcript[:-5] + "Bad."}])
    pair = load_preference_pairs(hh)[0]
    assert pair["prompt"] == parse_hh_rlhf_transcript(transcript)[:3]
    assert pair["chosen"] == [{"role": "assistant", "content": "Fine."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Bad."}]

    explicit = load_preference_pairs(
        write_jsonl(tmp_path / "explicit.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    )
    assert explicit[0] == {"prompt": "p", "chosen": "a", "rejected": "b"}  # plain text stays plain text

    user, good, bad = ({"role": r, "content": c} for r, c in [("user", "q"), ("assistant", "a"), ("assistant", "b")])
    rows = [{"chosen": [user, good], "rejected": [user, bad]}, {"prompt": "q2", "chosen": "x", "rejected": "y"}]
    mixed = load_preference_pairs(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert mixed[0] == {"prompt": [user], "chosen": [good], "rejected": [bad]}  # TRL's implicit prompt
    assert mixed[1]["prompt"] == [{"role": "user", "content": "q2"}]  # one format for all rows

    datasets.Dataset.from_list(rows[1:]).to_parquet(tmp_path / "pairs.parquet")
    assert load_preference_pairs(tmp_path / "pairs.parquet")[0] == rows[1]

    hh_test = load_preference_pairs(shared_benchmarks / "hh-rlhf/harmless-base_test.jsonl.gz")
    assert len(hh_test) == 2308  # 4 of the 2312 pairs have an empty response and are dropped


def test_hub_names_load_the_official_datasets(monkeypatch):
    calls = []
    hub_rows = {
        "ScalerLab/JudgeBench": [
            {
                "pair_id": "p",
                "original_id": "o",
                "source": "mmlu-pro-law",
                "question": "q",
                "response_model": "gpt-4o-2024-05-13",
                "response_A": "a",
                "response_B": "b",
                "label": "A>B",
            }
        ],
        "THU-KEG/RM-Bench": [
            {"id": 1, "domain": "safety-refuse", "prompt": "p", "chosen": ["a"] * 3, "rejected": ["b"] * 3}
        ],
    }

    def fake_load_dataset(repo_id, split):
        calls.append((repo_id, split))
        return datasets.Dataset.from_list(hub_rows[repo_id])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_benchmark("judgebench")[0]["category"] == "knowledge"
    assert load_benchmark("rm-bench")[0]["domain"] == "safety-refuse"
    assert calls[0] == ("ScalerLab/JudgeBench", "gpt") and calls[-1] == ("THU-KEG/RM-Bench", "train")


@pytest.mark.parametrize(
    "benchmark, filename, content, message",
    [
        ("rm-bench", "chat_filtered.json", "", "is empty"),
        ("rm-bench", "chat_filtered.json", "{not json", "not valid JSON"),
        ("rm-bench", "chat_filtered.json", '{"id": 1}', "expected a list of objects"),
        ("rm-bench", "chat_filtered.json", "[]", "holds no rows"),
        ("rm-bench", "notes.json", '[{"id": 1, "prompt": "p", "chosen": [], "rejected": []}]', "Cannot tell the"),
        (
            "rm-bench",
            "chat_filtered.json",
            '[{"id": 1, "prompt": "p", "chosen": ["a"], "rejected": []}]',
            "must have 3",
        ),
        ("rm-bench", "gpt.jsonl", '{"pair_id": 1, "question": "q"}\n', "no field\\(s\\) id, prompt, chosen, rejected"),
        ("judgebench", "gpt.jsonl", '{"pair_id": 1}\n{oops\n', "Line 2 of .* is not valid JSON"),
        ("pairs", "pairs.jsonl", '{"prompt": "p", "chosen": "a"}\n', "no field\\(s\\) rejected"),
        ("pairs", "pairs.jsonl", '{"chosen": "a", "rejected": "b"}\n', "HH-RLHF transcripts"),
        ("pairs", "pairs.csv", "chosen,rejected\n", "Unsupported file"),
    ],
)
def test_bad_data_gives_a_clear_error(tmp_path, capsys, benchmark, filename, content, message):
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_benchmark(benchmark, path)
    argv = ["--model", "length-baseline", "--benchmark", benchmark, "--data", str(path)]
    assert main(argv + ["--output-dir", str(tmp_path / "out")]) == 2
    assert "adajudge evaluate: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_arguments_give_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "length-baseline", "--benchmark", "mt-bench", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'mt-bench'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown benchmark 'mt-bench'"):
        evaluate_length_baseline("mt-bench", tmp_path)
    with pytest.raises(FileNotFoundError, match="No such file or folder"):
        load_benchmark("pairs", tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no default dataset"):
        load_benchmark("pairs")
    with pytest.raises(ValueError, match="lacks the column"):
        evaluate_length_baseline("judgebench", datasets.Dataset.from_list([{"prompt": "p"}]))


def test_judgebench_split_selects_the_response_model(tmp_path):
    pair = {"pair_id": 0, "source": "livecodebench", "question": "q", "response_A": "a", "response_B": "b"}
    write_jsonl(tmp_path / "gpt.jsonl", [{**pair, "response_model": "gpt-4o-2024-05-13", "label": "A>B"}])
    write_jsonl(tmp_path / "claude.jsonl", [{**pair, "response_model": "claude-3-5-sonnet-20240620", "label": "B>A"}])
    assert load_judgebench(tmp_path, split="claude")["label"] == ["B>A"]
    assert load_judgebench(tmp_path / "gpt.jsonl")["label"] == ["A>B"]
    with pytest.raises(ValueError, match="mixes pairs of several response models"):
        load_judgebench(tmp_path)
    with pytest.raises(ValueError, match="no pairs of split 'claude'"):
        load_judgebench(tmp_path / "gpt.jsonl", split="claude")
    with pytest.raises(ValueError, match="Unknown JudgeBench split 'gpt4'"):
        load_judgebench(tmp_path, split="gpt4")
