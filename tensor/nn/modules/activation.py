"""MultiheadAttention (torch.nn.MultiheadAttention: same parameters, state_dict keys, masks)."""
from __future__ import annotations

from ..._tensor import Tensor
from ...ops.attention import mha_batch_first
from .. import init
from ..parameter import Parameter
from .layers import Linear
from .module import Module

__all__ = ["MultiheadAttention"]


class MultiheadAttention(Module):
    """Attention over num_heads subspaces: concat(head_1..head_h) @ out_proj.

    Inputs (L, N, E) (batch_first: (N, L, E)) or unbatched (L, E). Parameters as PyTorch:
    ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E,) when kdim == vdim == embed_dim, else
    ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``; ``out_proj`` a Linear(E, E);
    ``bias_k``/``bias_v`` with add_bias_kv. Masks: key_padding_mask (N, S) and attn_mask
    (L, S) or (N * num_heads, L, S), bool (True = may NOT attend) or float (added).
    forward returns (attn_output, attn_weights or None); the weights are averaged over heads
    unless average_attn_weights=False.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads} instead")
        if embed_dim % num_heads:
            # AssertionError: what PyTorch raises here, so scripts that catch it still do
            raise AssertionError(f"embed_dim must be divisible by num_heads, got "
                                 f"embed_dim={embed_dim} and num_heads={num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        E = embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter.empty((3 * E, E), dtype, device)
            for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(n, None)
        else:
            self.q_proj_weight = Parameter.empty((E, E), dtype, device)
            self.k_proj_weight = Parameter.empty((E, self.kdim), dtype, device)
            self.v_proj_weight = Parameter.empty((E, self.vdim), dtype, device)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter.empty((3 * E,), dtype, device)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias, device=device, dtype=dtype)
        if add_bias_kv:
            self.bias_k = Parameter.empty((1, 1, E), dtype, device)
            self.bias_v = Parameter.empty((1, 1, E), dtype, device)
        else:
            self.register_parameter("bias_k", None)
            self.register_parameter("bias_v", None)
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def _projections(self):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            ws = (w[:E], w[E:2 * E], w[2 * E:])
        else:
            ws = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        b = self.in_proj_bias
        bs = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        return ws, bs

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: need attn_mask if specifying the is_causal "
                               "hint (build it with Transformer.generate_square_subsequent_mask)")
        if query.dim() not in (2, 3) or query.shape[-1] != self.embed_dim:
            raise RuntimeError(f"MultiheadAttention: expected query of shape (L, N, "
                               f"{self.embed_dim}) ((N, L, {self.embed_dim}) with batch_first) "
                               f"or unbatched (L, {self.embed_dim}), got {list(query.shape)}.")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._projections()
        out, weights = mha_batch_first(
            query, key, value, self.num_heads, w_q, w_k, w_v, b_q, b_k, b_v,
            self.out_proj.weight, self.out_proj.bias, self.bias_k, self.bias_v,
            self.add_zero_attn, self.dropout if self.training else 0.0, key_padding_mask,
            need_weights, attn_mask, average_attn_weights)
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")
