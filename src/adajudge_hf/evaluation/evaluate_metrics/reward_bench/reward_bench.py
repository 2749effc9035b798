"""RewardBench (v1) as an `evaluate` metric: a thin wrapper over `adajudge_hf.evaluation.reward_bench.reward_bench_scores`.

`evaluate.load` copies this file into its module cache, so it imports the installed `adajudge_hf` (no relative import).
"""

import datasets
import evaluate

from adajudge_hf.evaluation.reward_bench import reward_bench_scores


_DESCRIPTION = """
RewardBench (https://huggingface.co/papers/2403.13787), scored as allenai/reward-bench's `scripts/run_rm.py` and
leaderboard do: accuracy per subset (score_chosen > score_rejected, a tie is wrong); each section (Chat, Chat Hard,
Safety, Reasoning) averages its subsets weighted by the official example counts; the overall score is the mean of the
sections present. Percentages in [0, 100].
"""

_KWARGS_DESCRIPTION = """
Args:
    subset (`list[str]`): RewardBench subset of each pair (alpacaeval-easy, ..., hep-rust; 23 in all).
    id (`list[int]`): id of each pair; (subset, id) must be unique.
    score_chosen (`list[float]`): reward of the chosen response.
    score_rejected (`list[float]`): reward of the rejected response.
Returns:
    overall, num_pairs, sections_scored, sections_missing, subsets_missing, sections: {section: {score, num_pairs}},
    and subsets: {subset: {accuracy, num_pairs}}.
Example:
    >>> import evaluate
    >>> from adajudge_hf.evaluation import metric_path
    >>> reward_bench = evaluate.load(metric_path("reward_bench"))
    >>> reward_bench.compute(
    ...     subset=["hep-go", "math-prm"], id=[0, 1], score_chosen=[1.0, 0.0], score_rejected=[0.0, 1.0]
    ... )["sections"]["Reasoning"]["score"]
    14.285714285714286
"""

_CITATION = """
@inproceedings{lambert2025rewardbench,
  title={RewardBench: Evaluating Reward Models for Language Modeling},
  author={Lambert, Nathan and Pyatkin, Valentina and Morrison, Jacob and Miranda, LJ and Lin, Bill Yuchen and
    Chandu, Khyathi and Dziri, Nouha and Kumar, Sachin and Zick, Tom and Choi, Yejin and Smith, Noah A. and
    Hajishirzi, Hannaneh},
  booktitle={Findings of the Association for Computational Linguistics: NAACL 2025},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RewardBench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "subset": datasets.Value("string"),
                    "id": datasets.Value("int64"),
                    "score_chosen": datasets.Value("float64"),  # float64: a float32 cast can create ties
                    "score_rejected": datasets.Value("float64"),
                }
            ),
            reference_urls=[
                "https://github.com/allenai/reward-bench",
                "https://huggingface.co/datasets/allenai/reward-bench",
            ],
        )

    def _compute(self, subset, id, score_chosen, score_rejected):
        return reward_bench_scores(
            {"subset": s, "id": i, "score_chosen": c, "score_rejected": r}
            for s, i, c, r in zip(subset, id, score_chosen, score_rejected)
        )
