"""zgrad's data loading, as ``torch.utils.data``: datasets, samplers, collation and a
multi-process DataLoader whose workers hand batches over in shared memory.

    from runtime.data import DataLoader, TensorDataset
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, num_workers=2)
    for xb, yb in loader: ...

Built-in datasets (Digits, MNIST, FashionMNIST, CIFAR10, CharDataset, NpyFolder) are in
``runtime.data.datasets``.
"""
from .collate import default_collate, default_convert
from .dataloader import DataLoader, DataLoaderTimeoutError
from .dataset import (ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset,
                      TensorDataset, random_split)
from .distributed import DistributedSampler
from .sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler,
                      SubsetRandomSampler, WeightedRandomSampler)
from .worker import WorkerInfo, get_worker_info, shard

__all__ = ["DataLoader", "DataLoaderTimeoutError", "Dataset", "IterableDataset", "TensorDataset",
           "Subset", "ConcatDataset", "ChainDataset", "random_split", "Sampler",
           "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler",
           "BatchSampler", "DistributedSampler", "default_collate", "default_convert",
           "get_worker_info", "WorkerInfo", "shard"]
