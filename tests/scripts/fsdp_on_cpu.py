"""Run a training script under accelerate's FSDP2 with CPU processes (gloo), the code path GPU users take.

accelerate 1.15 turns an FSDP launch into FSDP only for accelerator-backed distributed types: with CPU processes
`AcceleratorState` ends as MULTI_CPU and the FSDP settings of `accelerate launch` are silently ignored (the FSDP
branch of `AcceleratorState.__init__` in accelerate/state.py lists MULTI_GPU, MULTI_XPU, ... but not MULTI_CPU). This
shim switches that state to FSDP with the launch's plugin, so the Trainer runs accelerate's own FSDP2 preparation
(`fsdp2_prepare_model`: `fully_shard` per `_no_split_modules`) and full-state-dict gathering, over gloo.

    accelerate launch --config_file tests/accelerate/fsdp2_cpu.yaml tests/scripts/fsdp_on_cpu.py SCRIPT [ARGS ...]
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu_init(self, *args, **kwargs):
    _accelerator_state_init(self, *args, **kwargs)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
        self.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _fsdp_on_cpu_init
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
