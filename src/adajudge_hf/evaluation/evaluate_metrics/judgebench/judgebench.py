"""JudgeBench as an `evaluate` metric: a thin wrapper over `adajudge_hf.evaluation.metrics.judgebench_scores`.

`evaluate.load` copies this file into its module cache, so it imports the installed `adajudge_hf` (no relative import).
"""

import datasets
import evaluate

from adajudge_hf.evaluation.metrics import judgebench_scores


_DESCRIPTION = """
JudgeBench (https://huggingface.co/papers/2410.12784) with the reward-model protocol (one game): the decision is
"A>B" if score_A > score_B else "B>A" (a tie falls to "B>A"); a pair is correct when the decision equals the label.
Accuracy per category (knowledge, reasoning, math, coding, from `source`) and overall as the micro-average over all
pairs. Percentages in [0, 100].
"""

_KWARGS_DESCRIPTION = """
Args:
    source (`list[str]`): JudgeBench `source` of each pair (mmlu-pro-*, livebench-reasoning, livebench-math,
        livecodebench).
    label (`list[str]`): "A>B" or "B>A".
    score_A (`list[float]`): reward of response A.
    score_B (`list[float]`): reward of response B.
Returns:
    overall, num_pairs, and categories: {category: {accuracy, num_pairs}}.
Example:
    >>> import evaluate
    >>> from adajudge_hf.evaluation import metric_path
    >>> judgebench = evaluate.load(metric_path("judgebench"))
    >>> judgebench.compute(source=["livecodebench"], label=["B>A"], score_A=[1.0], score_B=[1.0])["overall"]
    100.0
"""

_CITATION = """
@inproceedings{tan2025judgebench,
  title={JudgeBench: A Benchmark for Evaluating LLM-Based Judges},
  author={Tan, Sijun and Zhuang, Siyuan and Montgomery, Kyle and Tang, William Y. and Cuadron, Alejandro and
          Wang, Chenguang and Popa, Raluca Ada and Stoica, Ion},
  booktitle={The Thirteenth International Conference on Learning Representations},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Judgebench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "source": datasets.Value("string"),
                    "label": datasets.Value("string"),
                    "score_A": datasets.Value("float64"),  # float64: a float32 cast can create ties
                    "score_B": datasets.Value("float64"),
                }
            ),
            reference_urls=["https://github.com/ScalerLab/JudgeBench"],
        )

    def _compute(self, source, label, score_A, score_B):
        return judgebench_scores(
            {"source": s, "label": lab, "score_A": a, "score_B": b}
            for s, lab, a, b in zip(source, label, score_A, score_B)
        )
