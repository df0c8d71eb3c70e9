"""The Module base class and the layers built on it."""
from .container import ModuleDict, ModuleList, Sequential
from .layers import (ELU, GELU, Dropout, Embedding, Flatten, Identity, LeakyReLU, Linear,
                     LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh)
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss,
                   NLLLoss, SmoothL1Loss)
from .module import Module
from .batchnorm import (BatchNorm1d, BatchNorm2d, BatchNorm3d, InstanceNorm1d, InstanceNorm2d,
                        InstanceNorm3d)
from .sync_batchnorm import SyncBatchNorm
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .pooling import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d,
                      MaxPool2d)
from .spatial import (CircularPad1d, CircularPad2d, ConstantPad1d, ConstantPad2d, Dropout1d,
                      Dropout2d, ReflectionPad1d, ReflectionPad2d, ReplicationPad1d,
                      ReplicationPad2d, Unflatten, Upsample, ZeroPad1d, ZeroPad2d)
# sequence models (normalization, recurrent, attention, transformer)
from .activation import MultiheadAttention
from .normalization import GroupNorm, LayerNorm
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell
from .transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer,
                          TransformerEncoder, TransformerEncoderLayer)

__all__ = ["Module", "Sequential", "ModuleList", "ModuleDict", "Identity", "Linear", "Embedding",
           "Dropout", "Flatten", "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss",
           "BCELoss", "BCEWithLogitsLoss", "ELU", "SmoothL1Loss", "HuberLoss",
           # sequence models
           "LayerNorm", "GroupNorm", "RNNBase", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell",
           "GRUCell", "MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder",
           "TransformerDecoderLayer", "TransformerDecoder", "Transformer"]
__all__ += ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d",
            "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "BatchNorm1d",
            "BatchNorm2d", "BatchNorm3d", "Unflatten", "Dropout1d", "Dropout2d", "Upsample",
            "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "ZeroPad1d", "ZeroPad2d",
            "ConstantPad1d", "ConstantPad2d", "ReflectionPad1d", "ReflectionPad2d",
            "ReplicationPad1d", "ReplicationPad2d", "CircularPad1d", "CircularPad2d"]
__all__ += ["SyncBatchNorm"]
