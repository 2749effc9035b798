"""RM-Bench as an `evaluate` metric: a thin wrapper over `adajudge_hf.evaluation.metrics.rm_bench_scores`.

`evaluate.load` copies this file into its module cache, so it imports the installed `adajudge_hf` (no relative import).
"""

import datasets
import evaluate

from adajudge_hf.evaluation.metrics import rm_bench_scores


_DESCRIPTION = """
RM-Bench (https://huggingface.co/papers/2410.16184) scores a reward model on prompts that each have three chosen and
three rejected responses in styles concise / detailed plain / detailed markdown. Per domain (chat, math, code, safety;
safety pools safety-refuse and safety-response), a 3x3 matrix holds the % of prompts where chosen style i beats
rejected style j (strict >); hard = upper triangle, normal = diagonal, easy = lower triangle. Percentages in [0, 100].
"""

_KWARGS_DESCRIPTION = """
Args:
    domain (`list[str]`): RM-Bench domain of each prompt (chat, math, code, safety-refuse, safety-response).
    id (`list[int]`): RM-Bench id of each prompt; (domain, id) must be unique.
    score_chosen (`list[list[float]]`): rewards of the 3 chosen responses, in style order.
    score_rejected (`list[list[float]]`): rewards of the 3 rejected responses, in style order.
Returns:
    overall, easy, normal, hard (means over the domains present), num_prompts, domains_scored, domains_missing, and
    domains: {domain: {score, easy, normal, hard, num_prompts, matrix}}.
Example:
    >>> import evaluate
    >>> from adajudge_hf.evaluation import metric_path
    >>> rm_bench = evaluate.load(metric_path("rm_bench"))
    >>> rm_bench.compute(domain=["chat"], id=[0], score_chosen=[[3, 2, 1]], score_rejected=[[0, 0, 5]])["overall"]
    66.66666666666667
"""

_CITATION = """
@inproceedings{liu2025rmbench,
  title={RM-Bench: Benchmarking Reward Models of Language Models with Subtlety and Style},
  author={Liu, Yantao and Yao, Zijun and Min, Rui and Cao, Yixin and Hou, Lei and Li, Juanzi},
  booktitle={The Thirteenth International Conference on Learning Representations},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RmBench(evaluate.Metric):
    def _info(self):
        scores = datasets.Sequence(datasets.Value("float64"), length=3)  # float64: a float32 cast can create ties
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "domain": datasets.Value("string"),
                    "id": datasets.Value("int64"),
                    "score_chosen": scores,
                    "score_rejected": scores,
                }
            ),
            reference_urls=["https://github.com/THU-KEG/RM-Bench"],
        )

    def _compute(self, domain, id, score_chosen, score_rejected):
        return rm_bench_scores(
            {"domain": d, "id": i, "score_chosen": c, "score_rejected": r}
            for d, i, c, r in zip(domain, id, score_chosen, score_rejected)
        )
