"""A LeNet-style convolutional network for small grey (or colour) images.

    conv 5x5 (same) -> [BN] -> ReLU -> maxpool 2 -> conv 5x5 (same) -> [BN] -> ReLU -> maxpool 2
    -> flatten -> [dropout] -> fc hidden[0] -> ReLU -> [dropout] -> fc hidden[1] -> ReLU
    -> fc num_classes

Both convolutions pad to keep the size, so one definition serves MNIST (28x28 -> 7x7 after
the pools) and scikit-learn's digits (8x8 -> 2x2). The trainer registers it as ``cnn``.
"""
from __future__ import annotations

from tensor import nn


class CNN(nn.Module):
    """LeNet-style CNN: (N, in_channels, image_size, image_size) -> (N, num_classes) logits.

    Args:
        in_channels: image channels (1 for MNIST and digits).
        num_classes: output classes.
        image_size: height and width of the input (28 for MNIST, 8 for digits); at least 4.
        channels: output channels of the two convolutions.
        hidden: widths of the two fully connected hidden layers.
        dropout: dropout probability before each fully connected layer (0 disables it).
        batch_norm: BatchNorm2d after each convolution (the convolutions then have no bias).
    A flat input (N, in_channels * image_size**2) is reshaped to an image first.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 channels=(6, 16), hidden=(120, 84), dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        channels, hidden = tuple(channels), tuple(hidden)
        if len(channels) != 2 or len(hidden) != 2:
            raise ValueError(f"CNN: channels and hidden must have two entries each, got "
                             f"channels={channels}, hidden={hidden}")
        if image_size < 4:
            raise ValueError(f"CNN: image_size must be at least 4 (two 2x2 poolings), got "
                             f"{image_size}")
        self.in_channels, self.image_size = in_channels, image_size
        layers = []
        c_in = in_channels
        for c in channels:
            layers.append(nn.Conv2d(c_in, c, 5, padding=2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = image_size // 4
        fc, n_in = [nn.Flatten()], channels[-1] * side * side
        for h in hidden:
            if dropout:
                fc.append(nn.Dropout(dropout))
            fc += [nn.Linear(n_in, h), nn.ReLU()]
            n_in = h
        fc.append(nn.Linear(n_in, num_classes))
        self.classifier = nn.Sequential(*fc)

    def forward(self, x):
        s, c = self.image_size, self.in_channels
        if x.dim() == 2 and x.shape[1] == c * s * s:
            x = x.reshape(-1, c, s, s)
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"CNN: expected input (N, {c}, {s}, {s}) (or flat (N, {c * s * s})), "
                             f"got {list(x.shape)}; set model.args.image_size / in_channels to "
                             f"match the data.")
        return self.classifier(self.features(x))
