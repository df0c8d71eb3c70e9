"""intermediate_source/ddp_tutorial.rst (demo_basic, demo_checkpoint), renamed imports only:
init_process_group("gloo") from MASTER_ADDR/MASTER_PORT, DDP around a ToyModel, mp.spawn,
a checkpoint saved by rank 0 and loaded by every rank with map_location, dist.barrier.

Replaced: nothing but the port (a free one, so concurrent runs don't collide) and a trained
check: a few steps on a fixed regression target, loss falling and replicas equal.
"""
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.optim as optim
from torch.nn.parallel import DistributedDataParallel as DDP


def setup(rank, world_size, port):
    os.environ['MASTER_ADDR'] = 'localhost'
    os.environ['MASTER_PORT'] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def cleanup():
    dist.destroy_process_group()


class ToyModel(nn.Module):
    def __init__(self):
        super(ToyModel, self).__init__()
        self.net1 = nn.Linear(10, 10)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.net2(self.relu(self.net1(x)))


def demo_basic(rank, world_size, port):
    print(f"Running basic DDP example on rank {rank}.")
    setup(rank, world_size, port)
    torch.manual_seed(rank)           # different data per rank; DDP syncs the initial weights
    model = ToyModel().to(rank if torch.accelerator.is_available() else "cpu")
    ddp_model = DDP(model)
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(ddp_model.parameters(), lr=0.01)
    inputs, labels = torch.randn(20, 10), torch.randn(20, 5)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        outputs = ddp_model(inputs)
        loss = loss_fn(outputs, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "replicas diverged"
    assert losses[-1] < losses[0], losses
    print(f"rank {rank} TRAINED {losses[0]:.4f} -> {losses[-1]:.4f}")
    cleanup()
    print(f"Finished running basic DDP example on rank {rank}.")


def demo_checkpoint(rank, world_size, port, path):
    print(f"Running DDP checkpoint example on rank {rank}.")
    setup(rank, world_size, port)
    model = ToyModel().to("cpu")
    ddp_model = DDP(model)
    CHECKPOINT_PATH = os.path.join(path, "model.checkpoint")
    if rank == 0:
        torch.save(ddp_model.state_dict(), CHECKPOINT_PATH)
    dist.barrier()
    map_location = {'cuda:%d' % 0: 'cuda:%d' % rank}
    ddp_model.load_state_dict(
        torch.load(CHECKPOINT_PATH, map_location=map_location, weights_only=True))
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(ddp_model.parameters(), lr=0.001)
    optimizer.zero_grad()
    outputs = ddp_model(torch.randn(20, 10))
    labels = torch.randn(20, 5)
    loss_fn(outputs, labels).backward()
    optimizer.step()
    dist.barrier()       # rank 0 removes the file only after every rank has read it
    if rank == 0:
        os.remove(CHECKPOINT_PATH)
    cleanup()
    print(f"Finished running DDP checkpoint example on rank {rank}.")


def run_demo(demo_fn, world_size, *args):
    mp.spawn(demo_fn, args=(world_size, *args), nprocs=world_size, join=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    world_size = 2
    run_demo(demo_basic, world_size, free_port())
    run_demo(demo_checkpoint, world_size, free_port(), tempfile.mkdtemp())
    print("TRAINED (every rank)")
