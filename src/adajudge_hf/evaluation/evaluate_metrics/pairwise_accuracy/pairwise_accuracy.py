"""Pairwise preference accuracy as an `evaluate` metric: a thin wrapper over
`adajudge_hf.evaluation.metrics.pairwise_accuracy`.

`evaluate.load` copies this file into its module cache, so it imports the installed `adajudge_hf` (no relative import).
"""

import datasets
import evaluate

from adajudge_hf.evaluation.metrics import pairwise_accuracy


_DESCRIPTION = """
Accuracy of a reward model on preference pairs: the % of pairs whose chosen response gets a strictly higher reward
than the rejected one (ties count as wrong), with a Wilson score confidence interval. Percentages in [0, 100].
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_rewards (`list[float]`): reward of the chosen response of each pair.
    rejected_rewards (`list[float]`): reward of the rejected response of each pair.
    confidence (`float`, *optional*, defaults to 0.95): coverage of the confidence interval.
Returns:
    accuracy, ci_low, ci_high, confidence, num_pairs, num_ties, mean_margin.
Example:
    >>> import evaluate
    >>> from adajudge_hf.evaluation import metric_path
    >>> metric = evaluate.load(metric_path("pairwise_accuracy"))
    >>> metric.compute(chosen_rewards=[2.0, 0.5], rejected_rewards=[1.0, 0.5])["accuracy"]
    50.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "chosen_rewards": datasets.Value("float64"),  # float64: a float32 cast can create ties
                    "rejected_rewards": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, chosen_rewards, rejected_rewards, confidence: float = 0.95):
        return pairwise_accuracy(chosen_rewards, rejected_rewards, confidence=confidence)
