"""RewardBench 2 as an `evaluate` metric: a thin wrapper over `adajudge_hf.evaluation.reward_bench.reward_bench_2_scores`.

`evaluate.load` copies this file into its module cache, so it imports the installed `adajudge_hf` (no relative import).
"""

import datasets
import evaluate

from adajudge_hf.evaluation.reward_bench import reward_bench_2_scores


_DESCRIPTION = """
RewardBench 2 (https://huggingface.co/papers/2506.01937), scored as allenai/reward-bench's `scripts/run_v2.py` does.
Factuality, Precise IF, Math, Safety and Focus are best of 4: a prompt earns 1 when its correct completion has the
highest reward, 1/k when k completions share the top reward with it, else 0. Ties (ids `ref:<n>` / `tied:<n>`) is a
weighted score of accuracy and margin terms. The overall score is the unweighted mean over the subsets present.
Percentages in [0, 100].
"""

_KWARGS_DESCRIPTION = """
Args:
    subset (`list[str]`): RewardBench 2 subset of each prompt (Factuality, Precise IF, Math, Safety, Focus, Ties).
    id (`list[str]`): id of each prompt; (subset, id) must be unique.
    scores (`list[list[float]]`): rewards of the prompt's completions, the `num_correct` correct ones first.
    num_correct (`list[int]`): number of correct completions (1 outside Ties).
Returns:
    overall, num_prompts, subsets_scored, subsets_missing, and subsets: {subset: {score, num_prompts}} (Ties also
    holds the terms of its formula).
Example:
    >>> import evaluate
    >>> from adajudge_hf.evaluation import metric_path
    >>> reward_bench_2 = evaluate.load(metric_path("reward_bench_2"))
    >>> reward_bench_2.compute(
    ...     subset=["Math", "Math"], id=["0", "1"], scores=[[3, 1, 2, 0], [1, 1, 0, 0]], num_correct=[1, 1]
    ... )["overall"]
    75.0
"""

_CITATION = """
@article{malik2025rewardbench2,
  title={RewardBench 2: Advancing Reward Model Evaluation},
  author={Malik, Saumya and Pyatkin, Valentina and Land, Sander and Morrison, Jacob and Smith, Noah A. and
    Hajishirzi, Hannaneh and Lambert, Nathan},
  journal={arXiv preprint arXiv:2506.01937},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RewardBench2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "subset": datasets.Value("string"),
                    "id": datasets.Value("string"),
                    "scores": datasets.Sequence(datasets.Value("float64")),  # float64: a float32 cast can create ties
                    "num_correct": datasets.Value("int64"),
                }
            ),
            reference_urls=[
                "https://github.com/allenai/reward-bench",
                "https://huggingface.co/datasets/allenai/reward-bench-2",
            ],
        )

    def _compute(self, subset, id, scores, num_correct):
        return reward_bench_2_scores(
            {"subset": s, "id": i, "scores": r, "num_correct": n}
            for s, i, r, n in zip(subset, id, scores, num_correct)
        )
