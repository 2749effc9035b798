"""Serve a judge to RL stacks: `adajudge serve` (OpenRLHF `/get_reward`, slime `/score`, vLLM-style `/classify`),
dynamic batching with prompt-group packing, and `AdaJudgeReward` for TRL's GRPO/RLOO trainers.

Names are imported on first use, so `AdaJudgeReward` does not pull in the web stack.
"""

import importlib


_LAZY = {
    "AdaJudgeReward": "reward",
    "AdaJudgeRemoteReward": "reward",
    "create_app": "app",
    "LoadedJudge": "app",
    "ServeConfig": "app",
    "DynamicBatcher": "batcher",
    "ChatTemplateParser": "templates",
    "ItemEncoder": "templates",
    "load_for_serving": "cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
