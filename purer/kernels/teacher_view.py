"""A teacher as inversion sees it: logits plus the batch moments at every BN layer.

Eq. 4 compares the moments of each BatchNorm layer's *input* with its running
statistics, so inversion needs them next to the logits. Two ways to get them,
same numbers up to float rounding:

* :class:`HookedTeacher`: forward pre-hooks on the teacher's BN layers; works
  for any module.
* :class:`FoldedTeacher`: the teacher traced with ``torch.fx`` and rewritten.
  An eval-mode BatchNorm is a per-channel affine map ``y = s * x + t``, so it
  folds into the convolution before it; the moments of the BN input are
  recovered from those of the folded output (``mean_x = (mean_y - t) / s``,
  ``var_x = var_y / s^2``). A ReLU that feeds only a max-pool is moved after
  it (they commute exactly), so it runs on a quarter of the pixels. Both
  save work in the step's hottest part (docs/results.md has the measurements).

:func:`teacher_view` builds the folded one when the teacher traces cleanly and
falls back to hooks otherwise, so any timm model still works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.func import functional_call

from purer.kernels.losses import batch_moments, moments_and_max_pool, per_channel
from purer.parallel import copy_sharing_tensors

Stats = list[tuple[Tensor, Tensor, Tensor, Tensor]]  # (mean, var, running_mean, running_var) per BN

# Folding divides by the BN scale to recover the input's moments; a scale this
# close to zero would amplify rounding, so such layers keep their BN.
MIN_FOLD_SCALE = 1e-3


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel moments in at least float32 (bf16 activations under autocast)."""
    return batch_moments(x if x.dtype in (torch.float32, torch.float64) else x.float())


class _Sink:
    """Where the BN taps of one forward pass put their moments."""

    def __init__(self) -> None:
        self.stats: Stats | None = None


class HookedTeacher(nn.Module):
    """Any teacher, its BN inputs read by forward pre-hooks."""

    def __init__(self, model: nn.Module, bn_layers: list[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.sink = _Sink()
        self.handles = [layer.register_forward_pre_hook(self._record) for layer in bn_layers]

    def remove(self) -> None:
        """Take the hooks off the teacher's layers."""
        for handle in self.handles:
            handle.remove()

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self.sink.stats is not None:
            mean, var = _moments(inputs[0])
            self.sink.stats.append((mean, var, module.running_mean, module.running_var))

    def forward(self, x: Tensor) -> tuple[Tensor, Stats]:
        return _run_recording(self.model, self.sink, x)


class _Tap(nn.Module):
    """Stands where a BN layer was: records the moments of that layer's input.

    ``folded``: the BN was folded into the convolution before it, so the input
    here is already ``s * x + t`` and passes through; otherwise the BN's
    affine map is applied here, after recording.
    """

    def __init__(self, sink: _Sink, bn: nn.BatchNorm2d, scale: Tensor, shift: Tensor, folded: bool) -> None:
        super().__init__()
        self.sink, self.folded = sink, folded
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, y: Tensor) -> Tensor:
        if self.sink.stats is not None:
            self.record(*_moments(y))
        if self.folded:
            return y
        return torch.addcmul(per_channel(self.shift, y.dim()).to(y.dtype), y,
                             per_channel(self.scale, y.dim()).to(y.dtype))

    def record(self, mean: Tensor, var: Tensor) -> None:
        """Put the moments of this tap's input into the sink (of the BN input, when folded)."""
        if self.folded:
            mean = (mean - self.shift) / self.scale
            var = var / (self.scale * self.scale)
        self.sink.stats.append((mean, var, self.running_mean, self.running_var))


class _TapPool(nn.Module):
    """A folded :class:`_Tap` and the max-pool it feeds, as one step: the
    moments and the pool come from :func:`purer.losses.moments_and_max_pool`,
    whose backward writes the map-sized gradient once instead of three times."""

    def __init__(self, tap: _Tap, kernel: int) -> None:
        super().__init__()
        self.tap, self.kernel = tap, kernel

    def forward(self, y: Tensor) -> Tensor:
        if self.tap.sink.stats is None or y.dtype not in (torch.float32, torch.float64):
            return F.max_pool2d(self.tap(y), self.kernel)
        mean, var, pooled = moments_and_max_pool(y, self.kernel)
        self.tap.record(mean, var)
        return pooled


class FoldedTeacher(nn.Module):
    """A traced teacher with its eval-mode BNs folded into their convolutions.

    Teachers of one architecture share one traced module (``graph_module``)
    and each brings its own tensors (``state``), run with
    ``torch.func.functional_call``: a compiled inversion loss then sees the same
    code for all of them and compiles once, instead of once per teacher
    (torch.compile stops recompiling after 8 and falls back to eager).
    """

    def __init__(self, graph_module: fx.GraphModule, sink: _Sink, state: dict[str, Tensor]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.sink = sink
        self.state = state

    def forward(self, x: Tensor) -> tuple[Tensor, Stats]:
        return self.call(self.state, x)

    def call(self, state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Stats]:
        """The shared traced module run with ``state`` (this teacher's, or under
        ``vmap`` the stacked tensors of several teachers of this architecture)."""
        return _run_recording(lambda inputs: functional_call(self.graph_module, state, (inputs,)),
                              self.sink, x)


def worker_views(views: Sequence[nn.Module]) -> list[nn.Module] | None:
    """Views of the same teachers that another thread can run while ``views`` run.

    A folded view runs its shared traced module through ``functional_call``,
    which swaps the module's tensors in place for the call, and its taps
    write into one sink: two threads on one template would mix teachers. The
    copies get their own template (one per architecture, as in ``views``) and
    keep each teacher's ``state``, so no teacher tensor is duplicated (the
    templates' own tensors, never used, are shared with the originals).
    ``None`` when a view is hooked: its hooks sit on the teacher's own modules.
    """
    if not all(isinstance(view, FoldedTeacher) for view in views):
        return None
    templates: dict[int, tuple[fx.GraphModule, _Sink]] = {}
    copies: list[nn.Module] = []
    for view in views:
        key = id(view.graph_module)
        if key not in templates:
            templates[key] = copy_sharing_tensors((view.graph_module, view.sink), view.graph_module)
        graph_module, sink = templates[key]
        copies.append(FoldedTeacher(graph_module, sink, view.state))
    return copies


def _run_recording(model: Callable[[Tensor], Tensor], sink: _Sink, x: Tensor) -> tuple[Tensor, Stats]:
    stats: Stats = []
    sink.stats = stats
    try:
        logits = model(x)
    finally:
        sink.stats = None
    return logits, stats


def teacher_view(model: nn.Module, bn_layers: list[nn.Module], fold: bool = True,
                 example: Tensor | None = None, shared: dict[str, tuple] | None = None) -> nn.Module:
    """The fastest exact view of ``model`` for inversion (see the module doc).

    With ``example`` (a small input batch), a folded view is checked against
    the hooked one before it is used: same logits and moments, and a backward
    pass that runs (an in-place op on a folded output would break it).
    Views built with the same ``shared`` dict reuse one traced module per
    architecture (see :class:`FoldedTeacher`).
    """
    folded = fold_teacher(model, bn_layers, shared) if fold and bn_layers else None
    if folded is not None and (example is None or _agrees(folded, model, bn_layers, example)):
        return folded
    return HookedTeacher(model, bn_layers)


def _agrees(folded: FoldedTeacher, model: nn.Module, bn_layers: list[nn.Module], example: Tensor) -> bool:
    hooked = HookedTeacher(model, bn_layers)
    try:
        return _same_outputs(folded, hooked, example)
    finally:
        hooked.remove()


def _same_outputs(folded: FoldedTeacher, hooked: HookedTeacher, example: Tensor) -> bool:
    x = example.detach().clone().requires_grad_()
    try:
        logits, stats = folded(x)
        torch.autograd.grad(logits.float().sum() + sum(var.sum() for _, var, _, _ in stats), x)
    except RuntimeError:
        return False
    with torch.no_grad():
        want_logits, want_stats = hooked(example)
    pairs = [(logits, want_logits)] + [(a, b) for got, want in zip(stats, want_stats) for a, b in
                                       zip(got[:2], want[:2])]
    return len(stats) == len(want_stats) and all(
        torch.allclose(a.detach().float(), b.float(), rtol=1e-3, atol=1e-4) for a, b in pairs)


def fold_teacher(model: nn.Module, bn_layers: list[nn.Module],
                 shared: dict[str, tuple] | None = None) -> FoldedTeacher | None:
    """Trace and rewrite ``model``; ``None`` when it cannot be done exactly.

    Every layer of ``bn_layers`` must appear in the trace as a plain
    ``nn.BatchNorm2d`` call in eval mode (timm's fused BN+activation modules
    are traced through, so such teachers keep the hooks).
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # control flow on tensor values, unsupported ops, ...
        return None
    modules = dict(traced.named_modules())
    graph = traced.graph
    sink = _Sink()
    seen: set[int] = set()
    for node in list(graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not any(bn is layer for layer in bn_layers):
            continue
        if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None:
            return None
        seen.add(id(bn))
        scale, shift = _affine_of(bn)
        source = node.args[0]
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        foldable = (type(conv) is nn.Conv2d and len(source.users) == 1
                    and bool((scale.abs() > MIN_FOLD_SCALE).all()))
        if foldable:
            _set_module(traced, source.target, _folded_conv(conv, scale, shift))
        name = f"purer_tap_{len(seen)}"
        traced.add_submodule(name, _Tap(sink, bn, scale, shift, folded=foldable))
        node.target = name
    if len(seen) != len(bn_layers):
        return None
    _move_relus_after_pools(traced)
    _fuse_taps_with_pools(traced)
    _out_of_place(traced)
    graph.lint()
    traced.recompile()
    traced.requires_grad_(False)
    state = {**dict(traced.named_parameters()), **dict(traced.named_buffers())}
    if shared is None:
        return FoldedTeacher(traced, sink, state)
    # Same code, same modules (shapes, options, which taps folded): one template.
    taps = [m.folded for m in traced.modules() if isinstance(m, _Tap)]
    template, template_sink = shared.setdefault(f"{traced!r}{taps}", (traced, sink))
    return FoldedTeacher(template, template_sink, state)


def _affine_of(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(s, t)`` with ``bn(x) == s * x + t`` in eval mode, computed in float64."""
    invstd = torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(invstd)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(invstd)
    scale = weight * invstd
    shift = bias - bn.running_mean.double() * scale
    dtype = bn.running_var.dtype
    return scale.to(dtype).detach(), shift.to(dtype).detach()


def _folded_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        weight = conv.weight.double() * scale.double().view(-1, 1, 1, 1)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale, dtype=torch.float64)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias * scale.double() + shift.double())
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        folded.to(memory_format=torch.channels_last)
    return folded


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}


def _out_of_place(traced: fx.GraphModule) -> None:
    """Make in-place activations write new tensors.

    A folded convolution's output goes straight on (its BN used to make a
    copy) and its tap keeps it for the backward, so an in-place ReLU after it
    would corrupt the saved tensor. Modules are copied, not edited: they are
    shared with the original teacher.
    """
    modules = dict(traced.named_modules())
    for node in traced.graph.nodes:
        if not _in_place(node, modules):
            continue
        if node.op == "call_module":
            replacement = copy.copy(modules[node.target])
            replacement.inplace = False
            _set_module(traced, node.target, replacement)
        elif node.kwargs.get("inplace", False):
            node.kwargs = {**node.kwargs, "inplace": False}
        else:  # torch.relu_ / Tensor.relu_
            node.target = torch.relu if node.op == "call_function" else "relu"


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return getattr(modules.get(node.target), "inplace", False) is True
    if node.op not in ("call_function", "call_method"):
        return False
    return node.target in (torch.relu_, "relu_") or bool(node.kwargs.get("inplace", False))


def _is_max_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        pool = modules.get(node.target)
        return type(pool) is nn.MaxPool2d and not pool.return_indices
    return (node.op == "call_function" and node.target is F.max_pool2d
            and not node.kwargs.get("return_indices", False) and len(node.args) < 7)


def _fuse_taps_with_pools(traced: fx.GraphModule) -> None:
    """``pool(tap(y))`` -> ``tap_pool(y)`` where a folded tap feeds only a plain
    ``kernel x kernel`` max-pool of stride ``kernel`` (Conv4, after the ReLUs moved)."""
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        tap = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(tap, _Tap) or not tap.folded or len(node.users) != 1:
            continue
        pool = next(iter(node.users))
        kernel = _plain_pool_kernel(pool, modules)
        if kernel is None or pool.args[0] is not node or len(pool.args) > 1 or pool.kwargs:
            continue
        name = f"{node.target}_pool"
        traced.add_submodule(name, _TapPool(tap, kernel))
        with traced.graph.inserting_after(pool):
            fused = traced.graph.call_module(name, (node.args[0],))
        pool.replace_all_uses_with(fused)
        traced.graph.erase_node(pool)
        traced.graph.erase_node(node)
        traced.delete_submodule(node.target)


def _plain_pool_kernel(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """The kernel of an ``nn.MaxPool2d(k)`` call (stride k, no padding, dilation
    or ceil mode), else ``None``."""
    pool = modules.get(node.target) if node.op == "call_module" else None
    if type(pool) is not nn.MaxPool2d or pool.return_indices or pool.ceil_mode:
        return None
    kernel, stride = pool.kernel_size, pool.stride
    if not isinstance(kernel, int) or stride not in (kernel, (kernel, kernel)) \
            or pool.padding not in (0, (0, 0)) or pool.dilation not in (1, (1, 1)):
        return None
    return kernel


def _move_relus_after_pools(traced: fx.GraphModule) -> None:
    """``pool(relu(x))`` -> ``relu(pool(x))`` where the ReLU feeds only the pool.

    Max and ReLU commute (ReLU is monotone), bit for bit, in value and
    gradient; the ReLU then touches a quarter of the values.
    """
    modules = dict(traced.named_modules())
    for relu in list(traced.graph.nodes):
        if not _is_relu(relu, modules) or len(relu.users) != 1:
            continue
        if _in_place(relu, modules) and len(relu.args[0].users) != 1:
            continue  # someone else reads the tensor the ReLU overwrote
        pool = next(iter(relu.users))
        if not _is_max_pool(pool, modules) or pool.args[0] is not relu:
            continue
        pool.replace_input_with(relu, relu.args[0])
        with traced.graph.inserting_after(pool):
            moved = traced.graph.call_function(torch.relu, (pool,))
        pool.replace_all_uses_with(moved, delete_user_cb=lambda user, new=moved: user is not new)
        traced.graph.erase_node(relu)


