"""Process groups and collectives over ZeroMQ (``import runtime.distributed as dist``),
with torch.distributed's names and semantics.

    dist.init_process_group()            # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    dist.all_reduce(t)                    # t: a zgrad Tensor or a numpy/CuPy array
    w = dist.all_reduce(t, op=dist.ReduceOp.AVG, async_op=True); ...; w.wait()
    dist.destroy_process_group()

Modules: wire (framing, MACs, secret), store and rendezvous, transport (peer mesh, desync and
dead-peer checks) over control (ZeroMQ messages), zap (its connection gate) and data_channel
(bulk bytes over TCP), call (the call descriptor), work (Work, the communication thread),
process_group (one method per call, the route chosen in one place), tcp_algorithms
(ring/direct over TCP), tcp_p2p (point-to-point), shm_comm (every collective within a host),
collectives, p2p, objects, nccl (CuPy arrays through NCCL) and _cuda (CUDA Work semantics,
pinned staging of CuPy arrays for zmq); ddp and _reducer (DistributedDataParallel), algorithms
(Join, DDP comm hooks), optim (ZeRO).
"""
from .api import (GroupMember, destroy_process_group, get_backend, get_global_rank,
                  get_group_rank, get_process_group_ranks, get_rank, get_world_size,
                  init_process_group, is_available, is_initialized, new_group)
from .collectives import (all_gather, all_gather_into_tensor, all_reduce, all_to_all,
                          all_to_all_single, barrier, broadcast, gather, reduce, reduce_scatter,
                          reduce_scatter_tensor, scatter)
from .objects import all_gather_object, broadcast_object_list
from .p2p import P2POp, batch_isend_irecv, irecv, isend, recv, send
from .process_group import ProcessGroup
from .work import ReduceOp, Work
from .transport import AbortedError, DesyncError, PeerLostError
from ._grad_bucket import GradBucket
from .ddp import DistributedDataParallel
from . import algorithms  # noqa: E402,F401  (Join, ddp_comm_hooks)
from . import _sync_bn
from tensor.nn import _dist as _nn_dist

# SyncBatchNorm's cross-rank sums (tensor cannot import runtime: see tensor/nn/_dist.py)
_nn_dist.register(_sync_bn.all_reduce_sum, _sync_bn.world_size)

__all__ = [
    "init_process_group", "destroy_process_group", "is_available", "is_initialized",
    "get_rank", "get_world_size", "get_backend", "new_group", "get_process_group_ranks",
    "get_global_rank", "get_group_rank", "GroupMember", "ProcessGroup", "ReduceOp", "Work",
    "all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
    "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "all_to_all",
    "all_to_all_single", "barrier", "send", "recv", "isend", "irecv", "P2POp",
    "batch_isend_irecv",
    "broadcast_object_list", "all_gather_object", "DesyncError", "PeerLostError",
    "AbortedError", "DistributedDataParallel", "GradBucket", "algorithms",
]
