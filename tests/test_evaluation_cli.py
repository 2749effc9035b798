"""`adajudge evaluate` and the benchmark loaders: reports written and consistent, official figures, clear errors."""

import hashlib
import json
import shutil

import datasets
import pytest
import torch
from conftest import randomize_head
from transformers import AutoModelForSequenceClassification

from adajudge_hf.evaluation import (
    BENCHMARKS,
    Benchmark,
    benchmark_metrics,
    evaluate_length_baseline,
    evaluate_model,
    load_benchmark,
    load_judgebench,
    load_preference_pairs,
    load_rm_bench,
    parse_hh_rlhf_transcript,
    register_benchmark,
    routing_report,
)
from adajudge_hf.evaluation.cli import build_parser, main
from adajudge_hf.evaluation.data import read_records
from adajudge_hf.hub import render_card
from adajudge_hf.testing import make_tiny_backbone_config


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rm_bench_report_is_written_and_consistent(judge_folder, benchmark_slices, tmp_path, tiny_tokenizer):
    out = tmp_path / "report"
    argv = ["--model", str(judge_folder), "--benchmark", "rm-bench", "--data", str(benchmark_slices / "rm-bench")]
    assert main(argv + ["--output-dir", str(out), "--limit", "2", "--max-length", "96"]) == 0

    metrics, records = read_report(out)
    assert metrics["benchmark"] == "rm-bench" and metrics["model"] == str(judge_folder)
    assert metrics["num_items"] == len(records) == 6  # 2 prompts of each of chat, code, safety
    assert metrics["metrics"] == benchmark_metrics("rm-bench", records)  # the JSONL reproduces the JSON
    assert metrics["metrics"]["domains_scored"] == ["chat", "code", "safety"]
    assert metrics["metrics"]["domains_missing"] == ["math"]
    assert metrics["scoring"]["num_responses"] == 36 and metrics["scoring"]["max_length"] == 96
    chat_ids = [item["id"] for item in json.loads((benchmark_slices / "rm-bench/chat_filtered.json").read_text())]
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
        judge, tiny_tokenizer, "rm-bench", benchmark_slices / "rm-bench", limit=2, max_length=96
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

    # metrics.json names the judge folder (not the backbone it loads onto) and fingerprints its own weights.
    identity = read_report(out)[0]
    assert identity["model"] == str(folder)
    assert identity["judge"]["form"] == "heads" and identity["judge"]["base_model"] == str(backbone.resolve())
    assert identity["judge"]["weight_files"] == {
        "judge_head.safetensors": sha256_of(folder / "judge_head.safetensors")
    }


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_metrics_json_names_the_judge_and_fingerprints_its_weights(judge_folder, benchmark_slices, tmp_path):
    data = str(benchmark_slices / "hh-rlhf/harmless-base_test.jsonl.gz")
    argv = ["--model", str(judge_folder), "--benchmark", "pairs", "--data", data, "--limit", "2"]
    assert main(argv + ["--output-dir", str(tmp_path / "a")]) == 0
    judge = read_report(tmp_path / "a")[0]["judge"]
    weights = sha256_of(judge_folder / "model.safetensors")
    assert judge["name_or_path"] == str(judge_folder) and judge["form"] == "full" and judge["model_type"] == "adajudge"
    assert judge["weight_files"] == {"model.safetensors": weights}
    listing = f"{weights}  model.safetensors\n"  # as `sha256sum model.safetensors` prints it
    assert judge["fingerprint"] == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()

    # Other weights, same everything else: another fingerprint.
    other = tmp_path / "other-judge"
    shutil.copytree(judge_folder, other)
    judge_model = AutoModelForSequenceClassification.from_pretrained(other)
    randomize_head(judge_model, seed=7).save_pretrained(other)
    assert main(["--model", str(other), *argv[2:], "--output-dir", str(tmp_path / "b")]) == 0
    assert read_report(tmp_path / "b")[0]["judge"]["fingerprint"] not in (None, judge["fingerprint"])


def test_judgebench_report_of_a_stock_reward_model(stock_rm_folder, benchmark_slices, tmp_path):
    out = tmp_path / "report"
    data = benchmark_slices / "judgebench"
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


def test_pairs_report_from_hh_rlhf_transcripts(judge_folder, benchmark_slices, tmp_path):
    out = tmp_path / "report"
    data = benchmark_slices / "hh-rlhf/harmless-base_test.jsonl.gz"
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


def test_length_baseline_scores_the_longer_response_higher(benchmark_slices, tmp_path, capsys):
    """The length baseline end to end on the slices: each reward is the response's length, read from the raw files."""
    out = tmp_path / "rm-bench"
    argv = ["--model", "length-baseline", "--benchmark", "rm-bench", "--output-dir", str(out)]
    assert main(argv + ["--data", str(benchmark_slices / "rm-bench")]) == 0
    metrics, records = read_report(out)
    raw = {
        (domain, item["id"]): item
        for domain in ("chat", "code", "safety-refuse", "safety-response")
        for item in json.loads((benchmark_slices / f"rm-bench/{domain}_filtered.json").read_text())
    }
    assert len(records) == len(raw) == 14
    for record in records:
        item = raw[(record["domain"], record["id"])]
        assert record["score_chosen"] == [len(response) for response in item["chosen"]]
        assert record["score_rejected"] == [len(response) for response in item["rejected"]]
    assert metrics["model"] == "length-baseline" and metrics["metrics"] == benchmark_metrics("rm-bench", records)
    assert f"RM-Bench overall {metrics['metrics']['overall']:.1f} over 3 domain(s)" in capsys.readouterr().out

    judgebench = evaluate_length_baseline("judgebench", benchmark_slices / "judgebench", split="claude")
    claude = benchmark_slices / "judgebench/dataset=judgebench,response_model=claude-3-5-sonnet-20240620.jsonl"
    pairs = [json.loads(line) for line in claude.read_text().splitlines()]
    assert [record["decision"] for record in judgebench.records] == [
        "A>B" if len(pair["response_A"]) > len(pair["response_B"]) else "B>A" for pair in pairs
    ]


@pytest.mark.shared_data
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


def test_rm_bench_loader_reads_the_official_layouts(benchmark_slices, tmp_path):
    folder = load_rm_bench(benchmark_slices / "rm-bench")
    assert len(folder) == 14 and folder.column_names == ["domain", "id", "prompt", "chosen", "rejected"]
    assert len(set(zip(folder["domain"], folder["id"]))) == 14  # id 404 is in chat and in code, as upstream
    assert len(set(folder["id"])) == 13

    chat = load_rm_bench(benchmark_slices / "rm-bench/chat_filtered.json")
    assert set(chat["domain"]) == {"chat"} and len(chat) == 4
    rows = [{**row, "domain": "chat"} for row in chat.to_list()[:3]]
    (tmp_path / "total_dataset.json").write_text(json.dumps(rows))
    (tmp_path / "chat_filtered.json").write_text(json.dumps(rows))  # the folder's total_dataset.json wins
    assert len(load_rm_bench(tmp_path)) == 3


def test_preference_pairs_loader_normalises_every_format(tmp_path, benchmark_slices):
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

    hh_test = load_preference_pairs(benchmark_slices / "hh-rlhf/harmless-base_test.jsonl.gz")
    assert len(hh_test) == 40  # the slice's 41st pair has an empty response and is dropped


@pytest.mark.shared_data
def test_full_benchmark_files_have_the_documented_sizes(shared_benchmarks):
    rm_bench = load_rm_bench(shared_benchmarks / "rm-bench")
    assert len(rm_bench) == 798 and len(set(zip(rm_bench["domain"], rm_bench["id"]))) == 798
    assert len(set(rm_bench["id"])) == 798 - 23  # 23 ids repeat across chat and code
    assert len(load_rm_bench(shared_benchmarks / "rm-bench/chat_filtered.json")) == 129
    hh_test = load_preference_pairs(shared_benchmarks / "hh-rlhf/harmless-base_test.jsonl.gz")
    assert len(hh_test) == 2308  # 4 of the 2312 pairs have an empty response and are dropped
    assert len(load_judgebench(shared_benchmarks / "judgebench")) == 350  # both splits: gpt by default
    assert len(load_judgebench(shared_benchmarks / "judgebench", split="claude")) == 270


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
    argv = ["--model", "no/such-judge", "--benchmark", "pairs", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--max-batch-tokens", "0"]) == 2  # refused before any model is loaded
    assert "--max-batch-tokens must be >= 1, got 0" in capsys.readouterr().err
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
    assert load_judgebench(tmp_path)["label"] == ["A>B"]  # both splits in the folder: gpt, the default
    assert load_judgebench(tmp_path / "claude.jsonl")["label"] == ["B>A"]  # one split: that one
    with pytest.raises(ValueError, match="no pairs of split 'claude'"):
        load_judgebench(tmp_path / "gpt.jsonl", split="claude")
    write_jsonl(tmp_path / "other" / "llama.jsonl", [{**pair, "response_model": "llama-3", "label": "A>B"}])
    write_jsonl(tmp_path / "other" / "qwen.jsonl", [{**pair, "response_model": "qwen-2", "label": "A>B"}])
    with pytest.raises(ValueError, match=r"no pairs of split 'gpt' .*Pass the split of its pairs"):
        load_judgebench(tmp_path / "other")
    with pytest.raises(ValueError, match="Unknown JudgeBench split 'gpt4'"):
        load_judgebench(tmp_path, split="gpt4")


def test_judgebench_folder_with_both_splits_scores_the_default_gpt_split(benchmark_slices, tmp_path):
    """The official data/ folder holds both splits; `--help` promises gpt by default, and metrics.json says so."""
    out = tmp_path / "report"
    argv = ["--model", "length-baseline", "--benchmark", "judgebench", "--data", str(benchmark_slices / "judgebench")]
    assert main(argv + ["--output-dir", str(out)]) == 0
    metrics, records = read_report(out)
    gpt = benchmark_slices / "judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
    assert metrics["split"] == "gpt"
    assert [r["pair_id"] for r in records] == [json.loads(line)["pair_id"] for line in gpt.read_text().splitlines()]
    assert main(argv + ["--output-dir", str(tmp_path / "claude"), "--split", "claude"]) == 0
    assert read_report(tmp_path / "claude")[0]["split"] == "claude"


def test_evaluate_accepts_underscore_flags_like_train(benchmark_slices, tmp_path):
    parser = build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--"):
                assert parser._option_string_actions["--" + flag[2:].replace("-", "_")] is action
    dashes, underscores = tmp_path / "dashes", tmp_path / "underscores"
    argv = ["--model", "length-baseline", "--benchmark", "rm-bench", "--data", str(benchmark_slices / "rm-bench")]
    assert main(argv + ["--output-dir", str(dashes), "--max-length", "64", "--max-batch-tokens", "512"]) == 0
    assert main(argv + ["--output_dir", str(underscores), "--max_length", "64", "--max_batch_tokens", "512"]) == 0
    assert read_report(dashes)[0]["metrics"] == read_report(underscores)[0]["metrics"]


class InterruptAfter:
    """Wraps the judge's forward: counts the rows it scores and raises KeyboardInterrupt (Ctrl-C) on call number
    `interrupt_at`."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        from adajudge_hf import AdaJudgeForRewardModeling

        forward, self.rows = AdaJudgeForRewardModeling.forward, []

        def counted_forward(model, *args, **kwargs):
            if len(self.rows) + 1 == interrupt_at:
                raise KeyboardInterrupt
            self.rows.append(kwargs["input_ids"].shape[0])
            return forward(model, *args, **kwargs)

        monkeypatch.setattr(AdaJudgeForRewardModeling, "forward", counted_forward)
        self.undo = lambda: monkeypatch.setattr(AdaJudgeForRewardModeling, "forward", forward)


def test_interrupted_evaluation_keeps_what_was_scored_and_resumes(
    judge_folder, benchmark_slices, tmp_path, monkeypatch, capsys
):
    from adajudge_hf.cli import main as adajudge

    data = str(benchmark_slices / "hh-rlhf/harmless-base_test.jsonl.gz")
    argv = ["--model", str(judge_folder), "--benchmark", "pairs", "--data", data, "--limit", "12"]
    argv += ["--max-length", "64", "--max-batch-tokens", "128"]  # 24 responses in about 12 batches
    reference, out = tmp_path / "uninterrupted", tmp_path / "interrupted"
    assert main(argv + ["--output-dir", str(reference)]) == 0
    total = read_report(reference)[0]["scoring"]["num_responses"]

    # Ctrl-C during the 4th forward pass: the 3 batches scored before it are on disk, no report is.
    interrupted = InterruptAfter(monkeypatch, interrupt_at=4)
    assert adajudge(["evaluate", *argv, "--output-dir", str(out)]) == 130
    kept = sum(interrupted.rows)
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"adajudge evaluate: interrupted; {kept} of the {total} responses are scored and kept in {out}/.partial: run "
            "the same command again to resume (it scores only the rest)"
        )
    )
    assert 0 < kept < total and not (out / "metrics.json").exists()
    progress_file = out / ".partial" / "scored-0.jsonl"
    assert len(progress_file.read_text().splitlines()) == 1 + kept  # header + one line per response
    with open(progress_file, "a") as file:
        file.write("[0, 1.5, [0.3")  # the torn end of a write cut short by a crash: ignored

    # The same command resumes: it scores only the rest, and the report equals the uninterrupted one.
    interrupted.undo()
    resumed = InterruptAfter(monkeypatch)
    assert adajudge(["evaluate", *argv, "--output-dir", str(out)]) == 0
    assert sum(resumed.rows) == total - kept
    (metrics, records), (expected_metrics, expected_records) = read_report(out), read_report(reference)
    assert records == expected_records and metrics["metrics"] == expected_metrics["metrics"]
    assert not (out / ".partial").exists()  # its results are in the report

    # Other settings are another run: nothing kept from an interrupted run with other settings is reused.
    resumed.undo()
    other = InterruptAfter(monkeypatch, interrupt_at=2)
    assert adajudge(["evaluate", *argv, "--output-dir", str(out), "--max-length", "48"]) == 130
    other.undo()
    rescored = InterruptAfter(monkeypatch)
    assert adajudge(["evaluate", *argv, "--output-dir", str(out)]) == 0
    assert sum(rescored.rows) == total
    assert read_report(out)[1] == expected_records


@pytest.fixture
def tiny_benchmark():
    """A test-only benchmark, registered as one `Benchmark` entry: prompts with one good and two bad answers, scored
    by how often the good one wins, grouped by topic."""

    def load(data, split=None):
        return datasets.Dataset.from_list(read_records(data))

    def metrics(records):
        wins = [record["score_good"] > max(record["score_bad"]) for record in records]
        return {"win_rate": 100.0 * sum(wins) / len(wins), "num_prompts": len(records)}

    benchmark = Benchmark(
        name="tiny-test",
        title="Tiny test benchmark",
        load=load,
        columns=("topic", "prompt", "good", "bad"),
        responses=lambda item: [item["good"], *item["bad"]],
        sides={"good": 0, "bad": slice(1, 3)},
        identity=lambda item, position: {"topic": item["topic"], "index": position},
        metrics=metrics,
        group_by="topic",
        group=lambda item: item["topic"],
        groups=("geography", "arithmetic"),
        summary=lambda metrics: [f"Tiny win rate {metrics['win_rate']:.1f}"],
        card_table=lambda metrics: (
            ["win rate", "prompts"],
            [[f"{metrics['win_rate']:.1f}", metrics["num_prompts"]]],
            f"{metrics['num_prompts']} prompts",
            None,
        ),
        card_results=lambda metrics: [("Win rate", metrics["win_rate"])],
    )
    register_benchmark(benchmark)
    yield benchmark
    del BENCHMARKS[benchmark.name]


def test_a_benchmark_registered_as_one_entry_runs_end_to_end(
    tiny_benchmark, judge_folder, tmp_path, capsys, tiny_tokenizer
):
    """`--benchmark`, loading, `--limit`, `rewards.jsonl`, metrics, the routing report, the summary and the model
    card all come from the one `Benchmark` entry."""
    items = [
        {"topic": "geography", "prompt": "Capital of France?", "good": "Paris.", "bad": ["Rome.", "Berlin."]},
        {"topic": "geography", "prompt": "Capital of Italy?", "good": "Rome.", "bad": ["Paris.", "Oslo."]},
        {"topic": "arithmetic", "prompt": "2 + 2?", "good": "4", "bad": ["5", "22"]},
    ]
    data = write_jsonl(tmp_path / "tiny.jsonl", items)
    out = tmp_path / "eval" / "tiny"
    argv = ["--model", str(judge_folder), "--benchmark", "tiny-test", "--data", str(data), "--limit", "1"]
    assert main(argv + ["--output-dir", str(out)]) == 0
    assert "Tiny win rate" in capsys.readouterr().out

    metrics, records = read_report(out)
    assert metrics["benchmark"] == "tiny-test" and metrics["num_items"] == 2  # --limit 1 per topic
    assert [(r["topic"], r["index"]) for r in records] == [("geography", 0), ("arithmetic", 1)]
    assert all(len(r["score_bad"]) == 2 and len(r["routing_weights_bad"]) == 2 for r in records)
    assert metrics["metrics"] == benchmark_metrics("tiny-test", records)
    judge = AutoModelForSequenceClassification.from_pretrained(judge_folder)
    in_memory = evaluate_model(judge, tiny_tokenizer, "tiny-test", data, limit=1).records
    for saved, expected in zip(records, in_memory):
        assert saved["score_good"] == pytest.approx(expected["score_good"], abs=1e-5)
    routing = json.loads((out / "routing.json").read_text())
    assert routing["group_by"] == "topic" and list(routing["groups"]) == ["geography", "arithmetic", "all"]
    assert routing["groups"]["all"]["num_responses"] == 6

    card = str(render_card(judge_folder, tmp_path / "eval", repo_id="org/judge", base_model="Qwen/Qwen3-0.6B"))
    assert f"| {metrics['metrics']['win_rate']:.1f} | 2 |" in card
    assert "name: Win rate" in card and "type: tiny-test-benchmark" in card
    assert "adajudge evaluate --model" in card and "--benchmark tiny-test" in card
