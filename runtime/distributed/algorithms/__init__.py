"""``runtime.distributed.algorithms`` (torch.distributed.algorithms): Join for uneven inputs
and DDP's communication hooks (``algorithms.ddp_comm_hooks.default_hooks``)."""
from . import ddp_comm_hooks  # noqa: F401
from .join import Join, Joinable, JoinHook

__all__ = ["Join", "Joinable", "JoinHook", "ddp_comm_hooks"]
