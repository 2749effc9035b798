"""AdaJudge in vLLM: `vllm serve JUDGE --runner pooling` and `LLM(JUDGE, runner="pooling").classify(...)`.

Installing this package registers `register` under vLLM's `vllm.general_plugins` entry point, so every vLLM process
(front end and workers) knows the `AdaJudgeForRewardModeling` architecture without user code. The model class lives
in `adajudge_hf.vllm.model` and is imported by vLLM only when a judge is loaded (the lazy string form keeps plugin
loading free of CUDA initialisation). Only full (merged) checkpoints load: `save_judge(judge, folder, form="full")`.
"""

ARCHITECTURE = "AdaJudgeForRewardModeling"
"""The architecture name a saved judge's `config.json` lists."""
MODEL_CLASS = "adajudge_hf.vllm.model:AdaJudgeForRewardModeling"


def register() -> None:
    """Make vLLM load AdaJudge checkpoints. Re-entrant: vLLM calls it once in every process it starts."""
    from vllm import ModelRegistry

    import adajudge_hf  # noqa: F401  registers AdaJudgeConfig with AutoConfig, so no remote code runs

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


__all__ = ["ARCHITECTURE", "register"]
