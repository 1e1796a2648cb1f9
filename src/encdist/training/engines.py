"""Catalyst engines as this project runs them."""

from __future__ import annotations

import torch.distributed as dist
from catalyst import dl

__all__ = ["BarrierDDPEngine"]


class BarrierDDPEngine(dl.DistributedDataParallelEngine):
    """Catalyst's ``DistributedDataParallelEngine``, whose ranks tear the process group down together.

    Catalyst destroys the group as soon as a rank's experiment ends; a rank that gets there
    first closes connections its peer may still be using, and gloo's threads can then abort
    the process at exit (seen once in CI: "terminate called without an active exception" in
    rank 1, after its work was done). A barrier first makes the teardown common to all ranks.
    """

    def cleanup(self):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
