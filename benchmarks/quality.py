"""Quality of AdaJudge against the stock readout, static poolings and a fixed mixture, under a protocol declared
before the runs (`quality_protocol.yaml`).

Frozen SmolLM2-135M-Instruct features (computed once, prompts shared, cached in results/cache/) feed every head. The
protocol file fixes the data and its leak-free splits, the heads, the learning-rate x epoch grid (chosen on
validation only), the seeds, the one primary comparison, the Holm-corrected secondary ones, the equivalence margin
and the decision rule; this script follows it and records the file's sha256 in every run.

The study is a list of steps (feature shards, then one (head, learning rate, seed) run each), done in the declared
order and appended to results/quality-runs.jsonl as they finish, so it stops and resumes anywhere. Each call does
the next step (`--minutes M`: keeps taking steps while fewer than M minutes have passed and the next one is expected
to fit) and rewrites the report from the files. One step per acquisition of the shared lock:

    flock /tmp/adajudge-heavy.lock python benchmarks/quality.py next --minutes 10   # repeat until `status` says done
    python benchmarks/quality.py status    # what is done, what is left, what it is expected to cost
    python benchmarks/quality.py report    # quality.{md,json,png} and quality_summary.json from the recorded runs

Every run stores each held-out pair's two rewards and each response's routing weights, so any later analysis reruns
from results/quality-runs.jsonl and results/quality-split.json without a model. `--backbone tiny --smoke` runs the
whole study in minutes on a tiny random backbone with small splits (into a temporary folder), to prove every path.
"""

import argparse
import datetime
import hashlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.backbones import resolve_backbone
from adajudge_hf.comparison import (
    bootstrap_difference,
    holm_adjust,
    pair_key,
    routing_mutual_information,
    split_by_opening,
    use_fixed_mixture,
)
from adajudge_hf.embedded_data import EMBEDDED_PREFERENCES
from adajudge_hf.evaluation.data import load_rm_bench
from adajudge_hf.evaluation.metrics import rm_bench_domain
from adajudge_hf.evaluation.report import as_chat
from adajudge_hf.features import PackedFeatures, extract_features, score_features, train_heads


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROTOCOL = ROOT / "benchmarks" / "quality_protocol.yaml"
SHARD_PAIRS = 400  # feature shards: one shard is one step (a few minutes), so others' jobs can interleave
EXPECTED_MINUTES = {"features": 5.0, "cheap": 0.5, "adajudge": 14.0}  # what a step is expected to cost here


# ---------------------------------------------------------------------------------------------------------- protocol
def load_protocol(path: Path, smoke: bool = False) -> dict:
    protocol = yaml.safe_load(path.read_text())
    protocol["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if smoke:  # every path of the study, on small splits and short budgets
        data = protocol["data"]
        data["held_out"] = {"hh_rlhf_harmless": 60, "dpo_en_demo": 20}
        data["validation"] = {"hh_rlhf_harmless": 30, "dpo_en_demo": 10}
        data["train_cap"] = 120
        data["routing_probe"]["rm_bench_items_per_file"] = 2
        grid = protocol["training"]["grid"]
        grid["default"] = {"learning_rates": [3.0e-4, 3.0e-3], "max_epochs": 2}
        grid["adajudge"] = {"learning_rates": [3.0e-4, 1.0e-3], "max_epochs": 1}
        protocol["training"]["seeds"] = [0, 1, 2]
    return protocol


def declared_in_advance(protocol_path: Path, protocol: dict, runs: list[dict]) -> bool:
    """True when every run used this protocol file and the file, unchanged since, was committed before the first run."""
    if not runs or any(r["protocol_sha256"] != protocol["sha256"] for r in runs):
        return False
    try:
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(protocol_path)], cwd=ROOT).returncode
        committed = subprocess.run(
            ["git", "log", "-1", "--format=%cI", "--", str(protocol_path)], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return False
    if dirty or not committed:
        return False
    first_run = min(datetime.datetime.fromisoformat(r["started_at"]) for r in runs)
    return datetime.datetime.fromisoformat(committed) <= first_run


# -------------------------------------------------------------------------------------------------------------- data
def dpo_demo_pairs(path: Path) -> list[dict]:
    """LLaMA-Factory's sharegpt-style pairs as TRL conversational pairs."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    pairs = []
    for row in json.loads(path.read_text()):
        prompt = [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}],
            }
        )
    return pairs


def embedded_pairs() -> list[dict]:
    """All pairs the package ships, in file order (no train / test split of its own: the study splits them)."""
    import gzip
    from importlib.resources import as_file, files

    with as_file(files("adajudge_hf") / "data" / EMBEDDED_PREFERENCES) as path, gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def study_splits(protocol: dict) -> dict:
    """{"train" | "validation" | "held_out": [(source, pair)]}, plus "duplicates_dropped": the declared leak-free split."""
    data = protocol["data"]
    pairs, sources = [], []
    for source, where in data["sources"].items():
        loaded = embedded_pairs() if where == "embedded" else dpo_demo_pairs(ROOT / where)
        pairs += loaded
        sources += [source] * len(loaded)
    quotas = {"held_out": data["held_out"], "validation": data["validation"]}
    indices, dropped = split_by_opening(pairs, sources, quotas, salt=data["salt"])
    splits = {name: [(sources[i], pairs[i]) for i in members] for name, members in indices.items()}
    if "train_cap" in data:  # smoke runs only
        splits["train"] = splits["train"][: data["train_cap"]]
    splits["duplicates_dropped"] = dropped
    return splits


def rm_bench_probe(protocol: dict) -> tuple[list[str], list[tuple]] | None:
    """RM-Bench routing probe: (domain per item, (prompt, [3 chosen + 3 rejected]) per item), or None."""
    probe = protocol["data"].get("routing_probe") or {}
    if not probe.get("rm_bench") or not (ROOT / probe["rm_bench"]).exists():
        return None
    dataset = load_rm_bench(str(ROOT / probe["rm_bench"]))
    counts: dict[str, int] = {}
    keep = []
    for index, domain in enumerate(dataset["domain"]):  # the first items of each file, a fixed subset
        if counts.get(domain, 0) < probe["rm_bench_items_per_file"]:
            counts[domain] = counts.get(domain, 0) + 1
            keep.append(index)
    dataset = dataset.select(keep)
    groups = [(item["prompt"], list(item["chosen"]) + list(item["rejected"])) for item in dataset]
    return [rm_bench_domain(d) for d in dataset["domain"]], groups


def feature_shards(splits: dict, probe, tokenizer) -> dict[str, list[tuple]]:
    """name -> (prompt, [responses]) groups; every split cut into shards of `SHARD_PAIRS` groups."""
    shards = {}
    for split in ("train", "validation", "held_out"):
        groups = [(p["prompt"], [p["chosen"], p["rejected"]]) for _, p in splits[split]]
        for start in range(0, len(groups), SHARD_PAIRS):
            shards[f"{split}-{start // SHARD_PAIRS}"] = groups[start : start + SHARD_PAIRS]
    if probe is not None:
        chats = [[as_chat(tokenizer, prompt, r) for r in responses] for prompt, responses in probe[1]]
        shards["rm_bench-0"] = [(chat[0][0], [r for _, r in chat]) for chat in chats]
    return shards


def shard_path(cache: Path, name: str, groups: list, settings: dict) -> Path:
    key = json.dumps({"groups": groups, **settings}, sort_keys=True, default=str)
    return cache / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def save_features(path: Path, features: list[PackedFeatures]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "hidden": torch.cat([f.hidden_states for f in features]),
            "segments": torch.cat([f.segment_ids for f in features]),
            "lengths": torch.tensor([f.hidden_states.shape[0] for f in features]),
            "truncated": torch.tensor([f.truncated for f in features]),
        },
        path,
    )


def load_features(path: Path) -> list[PackedFeatures]:
    tensors = load_file(path)
    lengths = tensors["lengths"].tolist()
    hidden, segments = tensors["hidden"].split(lengths), tensors["segments"].split(lengths)
    return [PackedFeatures(h, s, bool(t)) for h, s, t in zip(hidden, segments, tensors["truncated"].tolist())]


# ---------------------------------------------------------------------------------------------------------- the study
class Study:
    """The declared protocol, its data, its recorded runs and the next step."""

    def __init__(self, args):
        self.args = args
        self.protocol = load_protocol(Path(args.protocol), smoke=args.smoke)
        self.output_dir = Path(args.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.runs_path = self.output_dir / "quality-runs.jsonl"
        self.costs_path = self.output_dir / "quality-costs.jsonl"
        backbone = args.backbone or self.protocol["backbone"]
        self.backbone_name = backbone
        if backbone == "tiny":
            from adajudge_hf.testing import save_tiny_causal_lm

            self.backbone = save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny")
        else:
            self.backbone = resolve_backbone(backbone)
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone)
        self.splits = study_splits(self.protocol)
        self.probe = rm_bench_probe(self.protocol)
        self.shards = feature_shards(self.splits, self.probe, self.tokenizer)
        settings = {"backbone": backbone, "max_length": self.protocol["max_length"]}
        cache = RESULTS / "cache" if not args.smoke else self.output_dir / "cache"
        self.shard_paths = {n: shard_path(cache, n, g, settings) for n, g in self.shards.items()}
        self._extractor = None
        self._features = None
        self.write_split()

    # ------------------------------------------------------------------ records
    def runs(self) -> list[dict]:
        if not self.runs_path.exists():
            return []
        return [json.loads(line) for line in self.runs_path.read_text().splitlines() if line.strip()]

    def write_split(self) -> None:
        """What every stored reward refers to: the held-out pairs (source and identity) and the probe's items."""
        split = {
            "protocol_sha256": self.protocol["sha256"],
            "duplicates_dropped": self.splits["duplicates_dropped"],
            "sizes": {
                name: {s: sum(1 for src, _ in self.splits[name] if src == s) for s in self.protocol["data"]["sources"]}
                for name in ("train", "validation", "held_out")
            },
            "held_out": [
                {"source": s, "pair_sha256": hashlib.sha256(pair_key(p).encode()).hexdigest()[:16]}
                for s, p in self.splits["held_out"]
            ],
            "rm_bench_domains": self.probe[0] if self.probe else [],
        }
        (self.output_dir / "quality-split.json").write_text(json.dumps(split, indent=1) + "\n")

    # ------------------------------------------------------------------ features
    def extractor(self) -> AdaJudgeForRewardModeling:
        if self._extractor is None:
            self._extractor = AdaJudgeForRewardModeling.from_backbone(
                self.backbone, tokenizer=self.tokenizer, num_refinement_blocks=0
            ).eval()
        return self._extractor

    def missing_shards(self) -> list[str]:
        return [name for name, path in self.shard_paths.items() if not path.exists()]

    def compute_shard(self, name: str) -> None:
        start = time.perf_counter()
        features = extract_features(
            self.extractor(), self.tokenizer, self.shards[name], self.protocol["max_length"], show_progress=False
        )
        save_features(self.shard_paths[name], features)
        seconds = time.perf_counter() - start
        tokens = sum(f.hidden_states.shape[0] for f in features)
        self.record_cost({"step": f"features {name}", "seconds": seconds, "groups": len(features), "tokens": tokens})
        print(f"features {name}: {len(features)} groups, {tokens} tokens, {seconds / 60:.1f} min", flush=True)

    def features(self) -> dict[str, list[PackedFeatures]]:
        if self._features is None:
            by_split: dict[str, list[PackedFeatures]] = {}
            for name, path in self.shard_paths.items():
                by_split.setdefault(name.rsplit("-", 1)[0], []).extend(load_features(path))
            self._features = by_split
        return self._features

    def record_cost(self, entry: dict) -> None:
        with self.costs_path.open("a") as handle:
            handle.write(json.dumps({**entry, "at": now()}) + "\n")

    # ------------------------------------------------------------------ plan
    def grid(self, head: str) -> dict:
        grids = self.protocol["training"]["grid"]
        return grids.get(head, grids["default"])

    def plan(self, runs: list[dict]) -> list[tuple]:
        """Steps not yet done, in the declared order (a step needing an undecided learning rate is listed as None)."""
        done = {(r["head"], r["learning_rate"], r["seed"]) for r in runs}
        steps = [("features", name) for name in self.missing_shards()]
        training = self.protocol["training"]
        heads = list(self.protocol["heads"])
        cheap = [h for h in heads if not self.protocol["heads"][h].get("num_refinement_blocks")]
        for group in (cheap, [h for h in heads if h not in cheap]):
            for head in group:
                for seed in training["tuning_seeds"]:
                    steps += [("train", head, lr, seed) for lr in self.grid(head)["learning_rates"]]
            for head in group:
                lr = chosen_lr(self.protocol, head, runs)
                steps += [("train", head, lr, s) for s in training["seeds"] if s not in training["tuning_seeds"]]
        return [s for s in steps if s[0] == "features" or (s[1], s[2], s[3]) not in done]

    def expected_minutes(self, step: tuple) -> float:
        if step[0] == "features":
            return EXPECTED_MINUTES["features"]
        return EXPECTED_MINUTES[
            "adajudge" if self.protocol["heads"][step[1]].get("num_refinement_blocks") else "cheap"
        ]

    # ------------------------------------------------------------------ one run
    def train(self, head: str, learning_rate: float, seed: int) -> dict:
        fields = dict(self.protocol["heads"][head])
        fixed_mixture = fields.pop("fixed_mixture", False)
        training, grid = self.protocol["training"], self.grid(head)
        features = self.features()
        started = now()
        t0 = time.perf_counter()
        extractor = self.extractor() if self._extractor is not None else None
        text_config = (extractor.config if extractor else self.base_config()).text_config
        torch.manual_seed(seed)
        config = AdaJudgeConfig(
            text_config=text_config,
            pad_token_id=self.tokenizer.pad_token_id or 0,
            **fields,
        )
        model = AdaJudgeForRewardModeling(config)
        if fixed_mixture:
            use_fixed_mixture(model)
        result = train_heads(
            model,
            features["train"],
            validation_features=features["validation"],
            evaluations_per_epoch=training["evaluations_per_epoch"],
            epochs=grid["max_epochs"],
            batch_size=training["batch_size"],
            learning_rate=learning_rate,
            weight_decay=training["weight_decay"],
            max_grad_norm=training["max_grad_norm"],
            seed=seed,
            show_progress=False,
        )
        train_seconds = time.perf_counter() - t0
        best = next(e for e in result.evaluations if e["step"] == result.best_step)
        run = {
            "head": head,
            "learning_rate": learning_rate,
            "seed": seed,
            "started_at": started,
            "protocol_sha256": self.protocol["sha256"],
            "backbone": self.backbone_name,
            "train_seconds": train_seconds,
            "best_epoch": result.best_epoch,
            "best_validation": {k: best[k] for k in ("accuracy", "bt_loss")},
            "validation": result.evaluations,
            "floor_ever_active": any(h["floor_active"] > 0 for h in result.history),
        }
        t1 = time.perf_counter()
        for name in ("held_out", "rm_bench"):
            if name not in features:
                continue
            scored = score_features(model, features[name])
            # (G, N): held-out pairs (chosen, rejected), probe items 3 chosen + 3 rejected; 9 digits hold a float32
            entry = {"rewards": [[float(f"{v:.9g}") for v in group] for group in scored["rewards"].tolist()]}
            if config.pooling == "adaptive":
                entry["routing"] = [
                    [[round(v, 5) for v in pi] for pi in g] for g in scored["routing_weights"].tolist()
                ]
            run[name] = entry
        run["score_seconds"] = time.perf_counter() - t1
        return run

    def base_config(self) -> AdaJudgeConfig:
        """The backbone's config without loading its weights (training reads cached features only)."""
        from transformers import AutoConfig

        return AdaJudgeConfig(text_config=AutoConfig.from_pretrained(self.backbone).to_dict())

    def step(self, step: tuple) -> None:
        if step[0] == "features":
            self.compute_shard(step[1])
            return
        _, head, lr, seed = step
        run = self.train(head, lr, seed)
        with self.runs_path.open("a") as handle:
            handle.write(json.dumps(run) + "\n")
        self.record_cost(
            {"step": f"{head} lr {lr:g} seed {seed}", "seconds": run["train_seconds"] + run["score_seconds"]}
        )
        pooled = accuracy(run["held_out"]["rewards"])
        print(f"{head:>14} lr {lr:<7g} seed {seed}: validation {100 * run['best_validation']['accuracy']:.1f} "
              f"(best epoch {run['best_epoch']:g}), held-out {pooled:.1f}  "
              f"({run['train_seconds']:.0f} s + {run['score_seconds']:.0f} s scoring)", flush=True)  # fmt: skip


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def accuracy(rewards: list[list[float]]) -> float:
    return 100 * statistics.mean(float(c > r) for c, r in rewards)


# ---------------------------------------------------------------------------------------------------------- analysis
def correct_matrix(runs: list[dict], head: str, lr: float, seeds: list[int], members: list[int]) -> torch.Tensor:
    """(S, N) held-out correctness (chosen reward > rejected reward) of one head at one learning rate."""
    by_seed = {r["seed"]: r for r in runs if r["head"] == head and r["learning_rate"] == lr}
    rows = []
    for seed in seeds:
        rewards = torch.tensor(by_seed[seed]["held_out"]["rewards"], dtype=torch.float64)[members]
        rows.append((rewards[:, 0] > rewards[:, 1]).double())
    return torch.stack(rows)


def compare(study: dict, a: str, b: str, scope: str, resamples: int, margin: float) -> dict | None:
    runs, chosen, members = study["runs"], study["chosen"], study["scopes"][scope]
    if chosen.get(a) is None or chosen.get(b) is None:
        return None
    seeds_a = {r["seed"] for r in runs if r["head"] == a and r["learning_rate"] == chosen[a]}
    seeds_b = {r["seed"] for r in runs if r["head"] == b and r["learning_rate"] == chosen[b]}
    common = sorted(seeds_a & seeds_b)
    if not common:
        return None
    result = bootstrap_difference(
        correct_matrix(runs, a, chosen[a], common, members),
        correct_matrix(runs, b, chosen[b], common, members),
        resamples=resamples,
    )
    low90, high90 = torch.quantile(result.draws, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    return {
        "a": a,
        "b": b,
        "scope": scope,
        "diff": 100 * result.difference,
        "ci_low": 100 * result.low,
        "ci_high": 100 * result.high,
        "ci90_low": 100 * low90,
        "ci90_high": 100 * high90,
        "p_value": result.p_value,
        "seeds": len(common),
        "seed_list": common,
        "pairs": len(members),
        "equivalence_met": -margin <= 100 * low90 and 100 * high90 <= margin,
        "complete": len(common) == len(study["expected_seeds"]),
    }


def routing_analysis(runs: list[dict], head: str, lr: float, sources: list[str], domains: list[str], resamples: int):
    """Per-input spread of pi, pi by source and RM-Bench domain, I(domain; expert) with intervals and a null."""
    chosen_runs = sorted((r for r in runs if r["head"] == head and r["learning_rate"] == lr), key=lambda r: r["seed"])
    if not chosen_runs or "routing" not in chosen_runs[0]["held_out"]:
        return None
    generator = torch.Generator().manual_seed(0)
    out = {"seeds": [r["seed"] for r in chosen_runs]}
    held_labels = [s for s in sources for _ in (0, 1)]  # both responses of each pair
    probes = {"source": ("held_out", held_labels)}
    if domains and "rm_bench" in chosen_runs[0]:
        probes["rm_bench_domain"] = ("rm_bench", [d for d in domains for _ in range(6)])
    for probe, (field, labels) in probes.items():
        names = sorted(set(labels))
        codes = torch.tensor([names.index(x) for x in labels])
        pis = [torch.tensor(r[field]["routing"], dtype=torch.float64).reshape(-1, 3) for r in chosen_runs]  # (M, 3)
        per_seed = [routing_mutual_information(pi, codes) for pi in pis]
        members = [torch.nonzero(codes == d).flatten() for d in range(len(names))]
        draws = []
        for _ in range(resamples):  # seeds with replacement, then responses within each domain
            chosen_seeds = torch.randint(len(pis), (len(pis),), generator=generator)
            values = []
            for s in chosen_seeds.tolist():
                index = torch.cat([m[torch.randint(len(m), (len(m),), generator=generator)] for m in members])
                values.append(routing_mutual_information(pis[s][index], codes[index]))
            draws.append(statistics.mean(values))
        null = []
        for _ in range(200):
            permutation = torch.randperm(len(codes), generator=generator)
            null.append(statistics.mean(routing_mutual_information(pi, codes[permutation]) for pi in pis))
        low, high = torch.quantile(
            torch.tensor(draws, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64)
        ).tolist()
        null95 = torch.quantile(torch.tensor(null, dtype=torch.float64), 0.95).item()
        shares = torch.bincount(codes).double() / len(codes)
        ceiling = min(float(-(shares * shares.log()).sum()), float(torch.log(torch.tensor(3.0))))
        out[probe] = {
            "mean_pi": {
                n: [statistics.mean(pi[codes == d].mean(0)[e].item() for pi in pis) for e in range(3)]
                for d, n in enumerate(names)
            },
            "mutual_information_nats": statistics.mean(per_seed),
            "mi_share_of_max": statistics.mean(per_seed) / ceiling,  # of min(H(domain), log 3): its size, not sign
            "mutual_information_per_seed": per_seed,
            "mi_ci_low": low,
            "mi_ci_high": high,
            "mi_permutation_null_95": null95,
            "domain_dependent": low > null95,
            "responses": len(codes),
        }
    pis = [torch.tensor(r["held_out"]["routing"], dtype=torch.float64).reshape(-1, 3) for r in chosen_runs]
    out["pi_std_per_input"] = [statistics.mean(pi[:, e].std().item() for pi in pis) for e in range(3)]
    out["mean_tv_to_mean_pi"] = statistics.mean((0.5 * (pi - pi.mean(0)).abs().sum(-1)).mean().item() for pi in pis)
    out["mean_pi"] = [statistics.mean(pi[:, e].mean().item() for pi in pis) for e in range(3)]
    return out


def summarise(protocol: dict, runs: list[dict], split: dict, costs: list[dict], declared: bool) -> dict:
    analysis, training = protocol["analysis"], protocol["training"]
    resamples = int(analysis["resamples"])
    margin = float(analysis["equivalence_margin"])
    sources = [p["source"] for p in split["held_out"]]
    scopes = {"pooled": list(range(len(sources)))}
    for source in analysis["descriptive"]["per_source"]:
        scopes[source] = [i for i, s in enumerate(sources) if s == source]
    heads = list(protocol["heads"])
    study = {"runs": runs, "scopes": scopes, "chosen": {}, "expected_seeds": training["seeds"]}
    grid_table = {}
    for head in heads:
        grid = protocol["training"]["grid"].get(head, protocol["training"]["grid"]["default"])
        grid_table[head] = {}
        for lr in grid["learning_rates"]:
            found = [r for r in runs if r["head"] == head and r["learning_rate"] == lr]
            tuning = [r for r in found if r["seed"] in training["tuning_seeds"]]
            grid_table[head][str(lr)] = {
                "validation_accuracy_tuning_seeds": [100 * r["best_validation"]["accuracy"] for r in tuning],
                "best_epochs": [r["best_epoch"] for r in found],
                "held_out_pooled_not_used_for_selection": [accuracy(r["held_out"]["rewards"]) for r in found],
                "seeds": [r["seed"] for r in found],
            }
        study["chosen"][head] = chosen_lr(protocol, head, runs)
    table = {}
    for head in heads:
        lr = study["chosen"][head]
        if lr is None:
            continue
        found = sorted((r for r in runs if r["head"] == head and r["learning_rate"] == lr), key=lambda r: r["seed"])
        table[head] = {"learning_rate": lr, "seeds": [r["seed"] for r in found],
                       "best_epoch": [r["best_epoch"] for r in found],
                       "last_check_is_best": [r["best_epoch"] == r["validation"][-1]["epoch"] for r in found],
                       "seconds_per_run": statistics.mean(r["train_seconds"] + r["score_seconds"] for r in found)}  # fmt: skip
        for scope, members in scopes.items():
            per_seed = [100 * statistics.mean(float(r["held_out"]["rewards"][i][0] > r["held_out"]["rewards"][i][1])
                                              for i in members) for r in found]  # fmt: skip
            table[head][scope] = {
                "mean": statistics.mean(per_seed),
                "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
    primary = analysis["primary"]
    declared_pairs = [(primary["a"], primary["b"])] + [(c["a"], c["b"]) for c in analysis["secondary"]]
    comparisons = []
    first = compare(study, primary["a"], primary["b"], primary["scope"], resamples, margin)
    if first:
        comparisons.append({**first, "primary": True, "family": "primary", "holm_p": first["p_value"]})
    secondary = [compare(study, c["a"], c["b"], "pooled", resamples, margin) for c in analysis["secondary"]]
    secondary = [{**c, "primary": False, "family": "secondary"} for c in secondary if c]
    per_source = [
        compare(study, a, b, source, resamples, margin)
        for a, b in declared_pairs
        for source in analysis["descriptive"]["per_source"]
    ]
    per_source = [{**c, "primary": False, "family": "descriptive per source"} for c in per_source if c]
    for family in (secondary, per_source):
        for c, adjusted in zip(family, holm_adjust([c["p_value"] for c in family])):
            c["holm_p"] = adjusted
    comparisons += secondary + per_source
    complete = all(len(table.get(h, {}).get("seeds", [])) == len(training["seeds"]) for h in heads)
    decision = decide(first, margin)
    routing = {}
    for head in heads:
        if study["chosen"][head] is not None:
            found = routing_analysis(runs, head, study["chosen"][head], sources, split["rm_bench_domains"], 1000)
            if found:
                routing[head] = found
    return {
        "protocol": protocol,
        "declared_in_advance": declared,
        "complete": complete,
        "decision": decision,
        "split_sizes": split["sizes"],
        "duplicates_dropped": split["duplicates_dropped"],
        "grid": grid_table,
        "table": table,
        "comparisons": comparisons,
        "routing": routing,
        "cost": cost_summary(costs),
    }


def chosen_lr(protocol: dict, head: str, runs: list[dict]) -> float | None:
    training = protocol["training"]
    grid = training["grid"].get(head, training["grid"]["default"])
    scores = {}
    for lr in grid["learning_rates"]:
        found = [r for r in runs if r["head"] == head and r["learning_rate"] == lr and r["seed"] in training["tuning_seeds"]]  # fmt: skip
        if len(found) < len(training["tuning_seeds"]):
            return None
        best = [r["best_validation"] for r in found]
        scores[lr] = (statistics.mean(b["accuracy"] for b in best), -statistics.mean(b["bt_loss"] for b in best))
    return max(scores, key=scores.get)


def decide(primary: dict | None, margin: float) -> str:
    """The declared decision rule, applied to the primary comparison."""
    if primary is None or not primary["complete"]:
        seeds = primary["seeds"] if primary else 0
        return f"not decided yet: the primary comparison has {seeds} of the declared seeds (study incomplete)"
    interval = f"{primary['diff']:+.1f} pp [{primary['ci_low']:+.1f}, {primary['ci_high']:+.1f}]"
    if primary["ci_low"] > 0:
        return f"AdaJudge beats the stock readout: {interval}, the 95 % interval above 0"
    if primary["ci_high"] < 0:
        return f"the stock readout beats AdaJudge: {interval}, the 95 % interval below 0"
    if primary["equivalence_met"]:
        return (f"equivalent within {margin:g} pp: {interval}; 90 % interval [{primary['ci90_low']:+.1f}, "
                f"{primary['ci90_high']:+.1f}] inside the margin")  # fmt: skip
    return (f"undecided at this size: {interval} includes 0 and the 90 % interval [{primary['ci90_low']:+.1f}, "
            f"{primary['ci90_high']:+.1f}] is not inside ±{margin:g} pp")  # fmt: skip


def cost_summary(costs: list[dict]) -> dict:
    features = [c for c in costs if c["step"].startswith("features")]
    runs = [c for c in costs if not c["step"].startswith("features")]
    per_head: dict[str, list[float]] = {}
    for c in runs:
        per_head.setdefault(c["step"].split()[0], []).append(c["seconds"])
    return {
        "feature_minutes": sum(c["seconds"] for c in features) / 60,
        "feature_tokens": sum(c.get("tokens", 0) for c in features),
        "run_minutes": {h: sum(v) / 60 for h, v in per_head.items()},
        "runs": {h: len(v) for h, v in per_head.items()},
        "total_minutes": sum(c["seconds"] for c in costs) / 60,
    }


# ------------------------------------------------------------------------------------------------------------ report
def summary_file(results: dict) -> dict:
    """results/quality_summary.json: the protocol's verdict and every declared comparison (percentage points)."""
    protocol = results["protocol"]
    keep = ("a", "b", "scope", "family", "primary", "diff", "ci_low", "ci_high", "ci90_low", "ci90_high", "p_value",
            "holm_p", "equivalence_met", "seeds", "pairs", "complete")  # fmt: skip
    return {
        "declared_in_advance": results["declared_in_advance"],
        "protocol_file": "benchmarks/quality_protocol.yaml",
        "protocol_sha256": protocol["sha256"],
        "complete": results["complete"],
        "decision": results["decision"],
        "protocol": {
            "seeds": len(protocol["training"]["seeds"]),
            "tuning_seeds": protocol["training"]["tuning_seeds"],
            "same_loss_for_all_poolings": True,
            "epoch_and_learning_rate_selected_on_validation": True,
            "split_sizes": results["split_sizes"],
            "equivalence_margin_pp": protocol["analysis"]["equivalence_margin"],
            "multiplicity": "Holm over the six secondary comparisons; per-source rows Holm within their own family",
            "backbone": protocol["backbone"],
            "regime": "frozen",
        },
        "chosen_learning_rates": {h: t["learning_rate"] for h, t in results["table"].items()},
        "heads": {
            h: {"pooled": t["pooled"]["mean"], "std": t["pooled"]["std"], "seeds": t["seeds"]}
            for h, t in results["table"].items()
        },  # fmt: skip
        "comparisons": [{k: c[k] for k in keep} for c in results["comparisons"]],
        "routing": {
            h: {k: r[k] for k in ("mean_pi", "pi_std_per_input", "mean_tv_to_mean_pi") if k in r}
            | {
                p: {
                    k: r[p][k]
                    for k in (
                        "mutual_information_nats",
                        "mi_ci_low",
                        "mi_ci_high",
                        "mi_permutation_null_95",
                        "domain_dependent",
                    )
                }
                for p in ("source", "rm_bench_domain")
                if p in r
            }
            for h, r in results["routing"].items()
        },  # fmt: skip
        "cost": results["cost"],
    }


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = results["protocol"]
    (output_dir / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
    (output_dir / "quality_summary.json").write_text(json.dumps(summary_file(results), indent=2) + "\n")
    table, sizes = results["table"], results["split_sizes"]
    seeds = protocol["training"]["seeds"]
    lines = [
        "# Quality study 2: declared in advance (`benchmarks/quality_protocol.yaml`)",
        "",
        f"Declared in advance: **{results['declared_in_advance']}** (protocol sha256 {protocol['sha256'][:12]}; true "
        "when every run used it and it was committed, unchanged since, before the first run). "
        + (
            "All declared runs are recorded."
            if results["complete"]
            else "**The study is not complete**: the tables "
            "below hold the runs recorded so far; `python benchmarks/quality.py status` lists what is left."
        ),
        "",
        f"**Decision (primary comparison, rule as declared)**: {results['decision']}.",
        "",
        f"Splits by conversation opening, exact duplicates dropped ({results['duplicates_dropped']}): train "
        f"{sizes['train']}, validation {sizes['validation']}, held-out {sizes['held_out']}. Frozen "
        f"{protocol['backbone']} features; focal BT for every head, the entropy floor where there are routing "
        f"weights; learning rate x epochs chosen on validation (tuning seeds {protocol['training']['tuning_seeds']}); "
        f"seeds {seeds}.",
        "",
        "## Heads (held-out accuracy %, mean ± std over seeds, at the learning rate chosen on validation)",
        "",
        "| head | lr | seeds | pooled | "
        + " | ".join(protocol["analysis"]["descriptive"]["per_source"])
        + " | best epoch per seed | best check is the last |",
        "|---|---|---|---|" + "---|" * (len(protocol["analysis"]["descriptive"]["per_source"]) + 2),
    ]
    for head, t in table.items():
        scopes = ["pooled", *protocol["analysis"]["descriptive"]["per_source"]]
        cells = " | ".join(f"{t[s]['mean']:.1f} ± {t[s]['std']:.1f}" for s in scopes)
        epochs = " / ".join(f"{e:g}" for e in t["best_epoch"])
        lines.append(f"| {head} | {t['learning_rate']:g} | {len(t['seeds'])} | {cells} | {epochs} | "
                     f"{sum(t['last_check_is_best'])} of {len(t['seeds'])} |")  # fmt: skip
    lines += [
        "",
        "## Comparisons (a − b, pp; 95 % hierarchical bootstrap, seeds and pairs; p two-sided; "
        f"equivalence: 90 % interval inside ±{protocol['analysis']['equivalence_margin']:g})",
        "",
        "| family | a − b | scope | seeds | pairs | diff [95 %] | 90 % | p | Holm p | equivalent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        name = f"**{c['a']} − {c['b']}**" if c["primary"] else f"{c['a']} − {c['b']}"
        lines.append(
            f"| {c['family']} | {name} | {c['scope']} | {c['seeds']} | {c['pairs']} | {c['diff']:+.1f} "
            f"[{c['ci_low']:+.1f}, {c['ci_high']:+.1f}] | [{c['ci90_low']:+.1f}, {c['ci90_high']:+.1f}] | "
            f"{c['p_value']:.4f} | {c['holm_p']:.4f} | {'yes' if c['equivalence_met'] else 'no'} |"
        )
    lines += ["", "## Learning-rate grid (best-check validation accuracy % on the tuning seeds; held-out shown, "
              "never used to choose)", "", "| head | lr | validation (tuning seeds) | best epochs | held-out pooled |",
              "|---|---|---|---|---|"]  # fmt: skip
    for head, per_lr in results["grid"].items():
        for lr, g in per_lr.items():
            mark = " (chosen)" if table.get(head, {}).get("learning_rate") == float(lr) else ""
            lines.append(f"| {head} | {float(lr):g}{mark} | "
                         + " / ".join(f"{v:.1f}" for v in g["validation_accuracy_tuning_seeds"]) + " | "
                         + " / ".join(f"{e:g}" for e in g["best_epochs"]) + " | "
                         + " / ".join(f"{v:.1f}" for v in g["held_out_pooled_not_used_for_selection"]) + " |")  # fmt: skip
    lines += ["", "## Routing (pi over last / mean / attention; held-out responses and the RM-Bench probe)", ""]
    for head, r in results["routing"].items():
        pis = lambda m: "; ".join(f"{k} ({', '.join(f'{v:.3f}' for v in pi)})" for k, pi in m.items())  # noqa: E731
        lines.append(f"- **{head}** (seeds {r['seeds']}): mean pi ({', '.join(f'{v:.3f}' for v in r['mean_pi'])}); "
                     f"per-input std ({', '.join(f'{v:.4f}' for v in r['pi_std_per_input'])}); mean total-variation "
                     f"distance to the mean pi {r['mean_tv_to_mean_pi']:.4f}")  # fmt: skip
        for probe in ("source", "rm_bench_domain"):
            if probe in r:
                p = r[probe]
                lines.append(f"  - by {probe}: {pis(p['mean_pi'])}; I(domain; expert) {p['mutual_information_nats']:.2e} "
                             f"nats [{p['mi_ci_low']:.2e}, {p['mi_ci_high']:.2e}] ({100 * p['mi_share_of_max']:.3f} % "
                             "of its maximum), permutation null 95th pct "
                             f"{p['mi_permutation_null_95']:.2e}: "
                             f"{'domain-dependent' if p['domain_dependent'] else 'not shown to depend on the domain'}")  # fmt: skip
    cost, label = results["cost"], "Cost" if results["complete"] else "Cost so far"
    lines += ["", f"{label}: features {cost['feature_minutes']:.1f} min ({cost['feature_tokens']} tokens); runs "
              + ", ".join(f"{h} {m:.1f} min ({cost['runs'][h]} runs)" for h, m in cost["run_minutes"].items())
              + f"; total {cost['total_minutes']:.1f} min of the 2-core machine."]  # fmt: skip
    (output_dir / "quality.md").write_text("\n".join(lines) + "\n")

    names = list(table)
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    for y, name in enumerate(names):
        values = table[name]["pooled"]["per_seed"]
        axis.scatter(values, [y] * len(values), s=12, color="tab:red" if name == "adajudge" else "tab:gray")
        axis.errorbar(table[name]["pooled"]["mean"], y, xerr=table[name]["pooled"]["std"], fmt="|k", capsize=3)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("pooled held-out accuracy % (dots: seeds; bar: mean ± std)")
    figure.tight_layout()
    figure.savefig(output_dir / "quality.png", dpi=120)
    plt.close(figure)
    print("\n".join(lines), flush=True)


def report(output_dir: Path, protocol_path: Path, smoke: bool = False) -> dict:
    """Every figure from the files: the runs, the split, the costs and the protocol."""
    protocol = load_protocol(protocol_path, smoke=smoke)
    runs_path, costs_path = output_dir / "quality-runs.jsonl", output_dir / "quality-costs.jsonl"
    runs = (
        [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()] if runs_path.exists() else []
    )
    costs = [json.loads(line) for line in costs_path.read_text().splitlines() if line.strip()] if costs_path.exists() else []  # fmt: skip
    split = json.loads((output_dir / "quality-split.json").read_text())
    declared = declared_in_advance(protocol_path, protocol, runs) and not smoke
    results = summarise(protocol, runs, split, costs, declared)
    write(results, output_dir)
    return results


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="next", choices=("next", "status", "report"))
    parser.add_argument("--protocol", default=str(PROTOCOL))
    parser.add_argument("--minutes", type=float, default=0.0, help="keep taking steps while the next fits in these")
    parser.add_argument("--backbone", help="override the protocol's backbone ('tiny': a tiny random one, smoke only)")
    parser.add_argument("--smoke", action="store_true", help="small splits and short budgets, to prove every path")
    parser.add_argument("--output-dir", help="default: benchmarks/results (a temporary folder with --smoke)")
    args = parser.parse_args(argv)
    if args.backbone == "tiny" and not args.smoke:
        raise SystemExit("--backbone tiny is for smoke runs: add --smoke (its results never go to benchmarks/results)")
    if args.output_dir is None:
        args.output_dir = tempfile.mkdtemp(prefix="quality-smoke-") if args.smoke else str(RESULTS)
    if args.command == "report":
        return report(Path(args.output_dir), Path(args.protocol), args.smoke)
    torch.set_num_threads(2)
    study = Study(args)
    start = time.perf_counter()
    taken = 0
    while True:
        steps = study.plan(study.runs())
        if args.command == "status" or not steps:
            break
        step = steps[0]
        if step[0] == "train" and step[2] is None:
            raise SystemExit(f"cannot plan {step}: its learning rate is not chosen yet (tuning runs missing)")
        elapsed = (time.perf_counter() - start) / 60
        if taken and elapsed + study.expected_minutes(step) > args.minutes:
            break
        study.step(step)
        taken += 1
        if step[0] == "features":
            study._features = None
    steps = study.plan(study.runs())
    left = sum(study.expected_minutes(s) for s in steps)
    print(f"{len(steps)} steps left, about {left:.0f} min: "
          + ", ".join(" ".join(str(x) for x in s[1:]) for s in steps[:6]) + (" ..." if len(steps) > 6 else ""))  # fmt: skip
    if study.missing_shards():
        return None
    return report(study.output_dir, Path(args.protocol), args.smoke)


if __name__ == "__main__":
    main()
