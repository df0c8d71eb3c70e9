"""beginner_source/examples_autograd/polynomial_autograd.py (pytorch_with_examples), renamed
imports only: a cubic fit to sin(x) with hand-written SGD under no_grad (``a -= lr * a.grad``)."""
import math

import torch

dtype = torch.float
device = "cpu"
torch.manual_seed(0)

x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
y = torch.sin(x)

a = torch.randn((), device=device, dtype=dtype, requires_grad=True)
b = torch.randn((), device=device, dtype=dtype, requires_grad=True)
c = torch.randn((), device=device, dtype=dtype, requires_grad=True)
d = torch.randn((), device=device, dtype=dtype, requires_grad=True)

learning_rate = 1e-6
losses = []
for t in range(300):
    y_pred = a + b * x + c * x ** 2 + d * x ** 3
    loss = (y_pred - y).pow(2).sum()
    losses.append(loss.item())
    if t % 100 == 99:
        print(t, loss.item())
    loss.backward()
    with torch.no_grad():
        a -= learning_rate * a.grad
        b -= learning_rate * b.grad
        c -= learning_rate * c.grad
        d -= learning_rate * d.grad
        a.grad = None
        b.grad = None
        c.grad = None
        d.grad = None

print(f'Result: y = {a.item()} + {b.item()} x + {c.item()} x^2 + {d.item()} x^3')
assert a.requires_grad and a.is_leaf      # updated in place, not rebound
assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
print(f"TRAINED {losses[0]:.4f} -> {losses[-1]:.4f}")
