"""Recurrent layers: RNN, LSTM, GRU and their cells (RNNCell, LSTMCell, GRUCell).

PyTorch's parameter names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
``..._reverse`` for the backward direction), gate orders (LSTM i, f, g, o; GRU r, z, n with
n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), shapes and initialisation
(every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))), so state_dicts move
between zgrad and PyTorch unchanged. Each layer and direction is one input projection for all
steps plus the fused recurrence of tensor/ops/rnn.py (see Note [Fused recurrence]).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ... import backend
from ..._tensor import Tensor
from ...creation import zeros
from ...ops.rnn import GATES, recurrence
from ...ops.shape import cat, stack
from .. import functional as F
from .. import init
from ..parameter import Parameter
from ..utils.rnn import PackedSequence, _step_index
from .module import Module

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


def _elman_mode(cls: str, nonlinearity: str) -> str:
    """The recurrence mode of an Elman RNN/RNNCell with this nonlinearity."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{cls}: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                         "'relu'.")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class RNNBase(Module):
    """The multi-layer, optionally bidirectional recurrent layer behind RNN, LSTM and GRU."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout}")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"{type(self).__name__}: hidden_size and num_layers must be "
                             f"positive, got {hidden_size} and {num_layers}")
        if dropout and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if proj_size < 0 or (proj_size and (mode != "LSTM" or proj_size >= hidden_size)):
            raise ValueError(f"{type(self).__name__}: proj_size must be 0, or for LSTM a "
                             f"positive number smaller than hidden_size ({hidden_size}); got "
                             f"{proj_size}.")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        out_size = proj_size or hidden_size  # the hidden state's size (the output's per direction)
        gh = GATES[mode] * hidden_size
        self._flat_weights_names = []
        for layer in range(num_layers):
            for sfx in ("", "_reverse")[:2 if bidirectional else 1]:
                n_in = input_size if layer == 0 else out_size * (2 if bidirectional else 1)
                shapes = {"weight_ih": (gh, n_in), "weight_hh": (gh, out_size)}
                if bias:
                    shapes.update(bias_ih=(gh,), bias_hh=(gh,))
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{sfx}"
                    setattr(self, name, Parameter.empty(shape, dtype, device))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    @property
    def _flat_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        """The parameters grouped per layer and direction, as PyTorch's all_weights."""
        w = self._flat_weights
        n = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        return [w[i:i + n] for i in range(0, len(w), n)]

    def flatten_parameters(self) -> None:
        """A no-op kept for PyTorch scripts (cuDNN's weight packing has no counterpart here)."""

    def _weights(self, layer: int, direction: int):
        sfx = "_reverse" if direction else ""
        get = lambda k: getattr(self, f"{k}_l{layer}{sfx}", None)  # noqa: E731
        return (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                get("weight_hr"))

    def forward(self, input, hx=None):
        """output, h_n (LSTM: output, (h_n, c_n)); see the subclasses for the shapes."""
        packed = isinstance(input, PackedSequence)
        x, mask, unbatched = self._time_major(input)
        B = x.shape[1]
        D = 2 if self.bidirectional else 1
        h0, c0 = self._initial_state(hx, x, B, D, unbatched, input if packed else None)
        layer_in, hs, cs = x, [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh, w_hr = self._weights(layer, d)
                k = layer * D + d
                gx = F.linear(layer_in, w_ih, b_ih)
                res = recurrence(gx, w_hh, b_hh, h0[k], None if c0 is None else c0[k],
                                 self.mode, mask, reverse=d == 1, w_hr=w_hr)
                outs.append(res[0])
                hs.append(res[1])
                if c0 is not None:
                    cs.append(res[2])
            layer_in = outs[0] if D == 1 else cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        h_n = stack(hs, 0)
        c_n = stack(cs, 0) if c0 is not None else None
        output = self._pack_output(layer_in, input, mask, unbatched)
        if packed and input.unsorted_indices is not None:
            h_n = h_n[:, input.unsorted_indices]
            c_n = c_n[:, input.unsorted_indices] if c_n is not None else None
        if unbatched:
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _time_major(self, input):
        """(T, B, input_size) input, the (T, B) mask of existing steps (or None), unbatched."""
        if isinstance(input, PackedSequence):
            lengths = input._lengths()
            t_idx, b_idx = _step_index(lengths)
            T, B = int(lengths.max()), lengths.size
            data = input.data
            where = np.full((T, B), data.shape[0], np.int64)
            where[t_idx, b_idx] = np.arange(t_idx.size)
            xp = backend.get_array_module(data.array)
            pad = zeros(1, data.shape[1], dtype=data.dtype, device=data.device)
            x = cat([data, pad], 0)[xp.asarray(where)]
            mask = np.arange(T)[:, None] < lengths[None, :]
            self._check_input(x, 3)
            return x, mask, False
        if not isinstance(input, Tensor):
            raise TypeError(f"{type(self).__name__}: expected a Tensor or PackedSequence input, "
                            f"got {type(input).__name__}")
        self._check_input(input, None)
        if input.dim() == 2:
            return input.unsqueeze(1), None, True
        return (input.transpose(0, 1) if self.batch_first else input), None, False

    def _check_input(self, x, ndim):
        if (ndim is None and x.dim() not in (2, 3)) or x.shape[-1] != self.input_size:
            raise RuntimeError(f"{type(self).__name__}: expected input of shape (L, N, "
                               f"{self.input_size}) ((N, L, {self.input_size}) with "
                               f"batch_first, or unbatched (L, {self.input_size})), got "
                               f"{list(x.shape)}.")

    def _initial_state(self, hx, x, B, D, unbatched, packed):
        """Per layer-and-direction initial states (h0, and c0 for LSTM), zeros by default."""
        shape = (self.num_layers * D, B, self.hidden_size)
        h_shape = shape[:2] + (self.proj_size or self.hidden_size,)
        lstm = self.mode == "LSTM"
        if hx is None:
            c0 = zeros(*shape, dtype=x.dtype, device=x.device)
            h0 = zeros(*h_shape, dtype=x.dtype, device=x.device) if self.proj_size else c0
            return h0, (c0 if lstm else None)
        if lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                got = (f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list))
                       else type(hx).__name__)
                raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of Tensors, got {got}.")
            states = list(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{type(self).__name__}: hx must be a Tensor, got "
                                f"{type(hx).__name__}")
            states = [hx]
        for i, s in enumerate(states):
            if unbatched:
                s = s.unsqueeze(1)
            want = h_shape if i == 0 else shape
            if tuple(s.shape) != want:
                name = ("h_0", "c_0")[i] if lstm else "hx"
                raise RuntimeError(f"{type(self).__name__}: expected {name} of size "
                                   f"{list(want[:1] + want[2:]) if unbatched else list(want)}"
                                   f", got {list(states[i].shape)}.")
            if packed is not None and packed.sorted_indices is not None:
                s = s[:, packed.sorted_indices]  # the caller's batch order -> the sorted one
            states[i] = s
        return states[0], (states[1] if lstm else None)

    def _pack_output(self, out, input, mask, unbatched):
        if isinstance(input, PackedSequence):
            t_idx, b_idx = np.nonzero(mask)
            xp = backend.get_array_module(out.array)
            data = out[xp.asarray(t_idx), xp.asarray(b_idx)]
            return PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                  input.unsorted_indices)
        if unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s


class RNN(RNNBase):
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) (or relu).

    input (L, N, H_in) (batch_first: (N, L, H_in)), optional hx (num_layers * D, N, H_out)
    -> output (L, N, D * H_out), h_n (num_layers * D, N, H_out).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None):
        mode = _elman_mode(type(self).__name__, nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(RNNBase):
    """Long short-term memory, gates i, f, g, o: returns output, (h_n, c_n).

    hx is (h_0, c_0), each (num_layers * D, N, H_out); zeros when omitted.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype)


class GRU(RNNBase):
    """Gated recurrent unit, gates r, z, n (PyTorch's: the reset gate multiplies
    W_hn h + b_hn). Returns output, h_n."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device=device, dtype=dtype)


class RNNCellBase(Module):
    """One step of a recurrent layer: weight_ih, weight_hh, bias_ih, bias_hh."""

    def __init__(self, mode, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        self.mode, self.input_size, self.hidden_size, self.bias = (mode, input_size,
                                                                   hidden_size, bias)
        gh = GATES[mode] * hidden_size
        self.weight_ih = Parameter.empty((gh, input_size), dtype, device)
        self.weight_hh = Parameter.empty((gh, hidden_size), dtype, device)
        if bias:
            self.bias_ih = Parameter.empty((gh,), dtype, device)
            self.bias_hh = Parameter.empty((gh,), dtype, device)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    reset_parameters = RNNBase.reset_parameters

    def _step(self, input, states):
        """(h', c') after one step from states [h, (c)] (input (N, H_in) or unbatched)."""
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise RuntimeError(f"{type(self).__name__}: expected input of shape (N, "
                               f"{self.input_size}) or ({self.input_size},), got "
                               f"{list(input.shape)}.")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        B = x.shape[0]
        n_states = 2 if self.mode == "LSTM" else 1
        if states is None:
            states = [zeros(B, self.hidden_size, dtype=x.dtype, device=x.device)] * n_states
        elif unbatched:
            states = [s.unsqueeze(0) for s in states]
        for s in states:
            if tuple(s.shape) != (B, self.hidden_size):
                raise RuntimeError(f"{type(self).__name__}: hidden state has shape "
                                   f"{list(s.shape)}, expected {[B, self.hidden_size]}.")
        gx = F.linear(x, self.weight_ih, self.bias_ih).unsqueeze(0)
        res = recurrence(gx, self.weight_hh, self.bias_hh, states[0],
                         states[1] if n_states == 2 else None, self.mode)
        outs = list(res[1:])
        return [o.squeeze(0) for o in outs] if unbatched else outs

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class RNNCell(RNNCellBase):
    """h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh) (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None):
        mode = _elman_mode(type(self).__name__, nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(mode, input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx=None) -> Tensor:
        return self._step(input, None if hx is None else [hx])[0]


class LSTMCell(RNNCellBase):
    """One LSTM step: (h, c) -> (h', c'), gates i, f, g, o."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx=None):
        return tuple(self._step(input, None if hx is None else list(hx)))


class GRUCell(RNNCellBase):
    """One GRU step: h -> h', gates r, z, n."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx=None) -> Tensor:
        return self._step(input, None if hx is None else [hx])[0]
