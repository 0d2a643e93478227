"""PyTorch's batch norm under vmap gives wrong second-order gradients (torch 2.14, CPU, float64).

The MAML pattern: an inner step with ``torch.func.grad``, the query loss after
it, and ordinary autograd for the outer (second-order) gradient. The same
computation looped over the two tasks and mapped with ``vmap`` should agree
to rounding. They do for the BN parameters, but not for the convolution
before the BN. Its bias cannot change a batch-normalised output, so its
gradient must be exactly 0: the loop gives 1e-17, vmap gives 2.6e-3.

purer works around this (``purer/batch_norm.py``: plain ops under
``torch.func`` transforms). When this script prints equal gradients on a new
torch, the workaround can go.

    python docs/repro/batch_norm_vmap_second_order.py
"""
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

torch.manual_seed(0)
P = [torch.randn(4, 3, 3, 3, dtype=torch.double, requires_grad=True),   # conv weight
     torch.randn(4, dtype=torch.double, requires_grad=True),             # conv bias
     torch.rand(4, dtype=torch.double).add(0.5).requires_grad_(),        # bn weight
     torch.randn(4, dtype=torch.double, requires_grad=True)]             # bn bias
x = torch.randn(2, 6, 3, 5, 5, dtype=torch.double)      # 2 tasks of 6 images
y = torch.randint(0, 4, (2, 6))
def inner(p, xs, ys):
    h = F.batch_norm(F.conv2d(xs, p[0], p[1]), None, None, p[2], p[3], training=True)
    return F.cross_entropy(h.mean((2, 3)), ys)
def outer(xs, ys):
    g = grad(inner)(P, xs, ys)
    return inner([a - 0.5 * b for a, b in zip(P, g)], xs, ys)
looped = sum(outer(x[t], y[t]) for t in range(2))
mapped = vmap(outer)(x, y).sum()
gl = torch.autograd.grad(looped, P)
gm = torch.autograd.grad(mapped, P)
print("loss diff", float((looped - mapped).detach()))
for name, a, b in zip(["conv.w", "conv.b (0 in theory)", "bn.w", "bn.b"], gl, gm):
    print(f"{name:22s} loop {a.abs().max().item():.2e}  vmap {b.abs().max().item():.2e}  diff {(a - b).abs().max().item():.2e}")
