"""Differentiable ops, grouped by kind (elementwise, reduce, shape, index, linalg, nn)."""
