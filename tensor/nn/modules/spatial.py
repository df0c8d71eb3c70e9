"""Shape and spatial helpers of convolutional networks: Unflatten, Dropout1d/2d, Upsample and
the padding layers (ZeroPad, ConstantPad, ReflectionPad, ReplicationPad, CircularPad 1d/2d)."""
from __future__ import annotations

from ..._tensor import Tensor
from .. import functional as F
from .layers import _DropoutNd
from .module import Module


class Unflatten(Module):
    """Expand dim `dim` into `unflattened_size`: (N, C*H*W) -> (N, C, H, W) for (C, H, W)."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        if isinstance(dim, str):
            raise TypeError("Unflatten: named dimensions are not supported by zgrad; pass an int "
                            "dim.")
        if not isinstance(unflattened_size, (tuple, list)):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple of ints, got "
                            f"{type(unflattened_size).__name__}")
        self.dim, self.unflattened_size = dim, unflattened_size

    def forward(self, input: Tensor) -> Tensor:
        return input.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Dropout1d(_DropoutNd):
    """Zero whole channels of (N, C, L) or (C, L) with probability p in training."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_DropoutNd):
    """Zero whole channels (feature maps) of (N, C, H, W) with probability p in training,
    scaling the rest by 1/(1-p). As PyTorch, a 3-D input is taken as (N, C, L), with its
    warning."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Upsample(Module):
    """Resample (N, C, *spatial) to `size` or by `scale_factor` (F.interpolate's modes)."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners=None, recompute_scale_factor=None):
        super().__init__()
        self.size = size
        self.scale_factor = float(scale_factor) if isinstance(scale_factor, int) \
            else scale_factor
        self.mode, self.align_corners = mode, align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input: Tensor) -> Tensor:
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             recompute_scale_factor=self.recompute_scale_factor)

    def extra_repr(self) -> str:
        info = (f"size={self.size}" if self.size is not None
                else f"scale_factor={self.scale_factor}")
        return info + f", mode={self.mode!r}"


class _PadNd(Module):
    """Pad the last `_n` dims by F.pad in `_mode`; padding is an int or a 2*_n tuple
    (left, right, top, bottom, front, back)."""

    _n, _mode = 2, "constant"

    def __init__(self, padding, value: float = 0.0):
        super().__init__()
        if isinstance(padding, int):
            padding = (padding,) * (2 * self._n)
        padding = tuple(padding)
        if len(padding) != 2 * self._n:
            raise ValueError(f"{type(self).__name__}: padding must be an int or a tuple of "
                             f"{2 * self._n} ints, got {padding!r}")
        self.padding = padding
        if self._mode == "constant":
            self.value = value

    def forward(self, input: Tensor) -> Tensor:
        if self._mode == "constant":
            return F.pad(input, self.padding, "constant", self.value)
        return F.pad(input, self.padding, self._mode)

    def extra_repr(self) -> str:
        if type(self).__name__.startswith("ConstantPad"):
            return f"padding={self.padding}, value={self.value}"
        return f"{self.padding}"


def _pad_class(name, n, mode, doc):
    cls = type(name, (_PadNd,), {"_n": n, "_mode": mode, "__doc__": doc})
    if name.startswith("ZeroPad"):  # no value argument
        def __init__(self, padding):
            _PadNd.__init__(self, padding, 0.0)
        cls.__init__ = __init__
    elif not name.startswith("ConstantPad"):
        def __init__(self, padding):
            _PadNd.__init__(self, padding)
        cls.__init__ = __init__
    return cls


ZeroPad1d = _pad_class("ZeroPad1d", 1, "constant", "Pad the last dim with zeros.")
ZeroPad2d = _pad_class("ZeroPad2d", 2, "constant", "Pad the last 2 dims with zeros.")
ConstantPad1d = _pad_class("ConstantPad1d", 1, "constant", "Pad the last dim with a value.")
ConstantPad2d = _pad_class("ConstantPad2d", 2, "constant",
                           "Pad the last 2 dims with a value.")
ReflectionPad1d = _pad_class("ReflectionPad1d", 1, "reflect",
                             "Pad the last dim with its reflection (edge not repeated).")
ReflectionPad2d = _pad_class("ReflectionPad2d", 2, "reflect",
                             "Pad the last 2 dims with their reflection.")
ReplicationPad1d = _pad_class("ReplicationPad1d", 1, "replicate",
                              "Pad the last dim by repeating its edge values.")
ReplicationPad2d = _pad_class("ReplicationPad2d", 2, "replicate",
                              "Pad the last 2 dims by repeating their edge values.")
CircularPad1d = _pad_class("CircularPad1d", 1, "circular", "Pad the last dim circularly.")
CircularPad2d = _pad_class("CircularPad2d", 2, "circular",
                           "Pad the last 2 dims circularly (wrapping around).")


class PixelShuffle(Module):
    """(*, C*r^2, H, W) -> (*, C, H*r, W*r): sub-pixel convolution's rearrangement (Shi et al.)."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, input: Tensor) -> Tensor:
        return F.pixel_shuffle(input, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H*r, W*r) -> (*, C*r^2, H, W), the inverse of PixelShuffle."""

    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, input: Tensor) -> Tensor:
        return F.pixel_unshuffle(input, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"
