"""MLP: the model of the digits and MNIST configs."""
from __future__ import annotations

import tensor.nn as nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    """Flatten, then (Linear, activation, Dropout) per hidden size, then a Linear head.

    x: (N, *) with prod(*) == in_features -> logits (N, num_classes).

    Args:
        in_features: features per sample after flattening (the trainer fills it in from the
            data set when the config leaves it out).
        num_classes: outputs (likewise filled in from the data set's ``classes``).
        hidden_sizes: widths of the hidden layers, e.g. [512, 512].
        dropout: dropout probability after each hidden activation (0: no Dropout layer).
        activation: relu, gelu, silu, tanh, sigmoid or leaky_relu.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_sizes=(512, 512),
                 dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLP: activation {activation!r} is not one of "
                             f"{sorted(_ACTIVATIONS)}")
        if isinstance(hidden_sizes, int):
            hidden_sizes = [hidden_sizes]
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        layers, width = [nn.Flatten()], self.in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), _ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, self.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
