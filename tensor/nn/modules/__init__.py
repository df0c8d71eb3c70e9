"""The Module base class and the layers built on it."""
from .container import ModuleDict, ModuleList, Sequential
from .layers import (ELU, GELU, Dropout, Embedding, Flatten, Identity, LeakyReLU, Linear, LogSoftmax,
                     ReLU, Sigmoid, SiLU, Softmax, Tanh)
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss,
                   NLLLoss, SmoothL1Loss)
from .module import Module

__all__ = ["Module", "Sequential", "ModuleList", "ModuleDict", "Identity", "Linear", "Embedding",
           "Dropout", "Flatten", "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss",
           "BCELoss", "BCEWithLogitsLoss", "ELU", "SmoothL1Loss", "HuberLoss"]
