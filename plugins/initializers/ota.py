"""OTA baseline: fuse the teachers after aligning their neurons (Singh & Jaggi 2020).

"Model fusion via optimal transport" aligns each model's neurons to those of
an anchor model, layer by layer, and then averages the aligned weights. A
neuron is a conv output channel or a linear unit; once layer l's neurons are
matched, the match is carried into layer l+1's *input* channels (and into
the BatchNorm weights and running statistics that follow layer l), so every
aligned teacher computes exactly the function it computed before.

Why an assignment solver is the OT solver here: with the same width on both
sides and uniform marginals, the optimal transport plan between two layers'
neurons is a vertex of the Birkhoff polytope, i.e. a permutation (Birkhoff-
von Neumann), so exact OT reduces to the linear assignment problem, solved
exactly by ``scipy.optimize.linear_sum_assignment``. The cost between anchor
neuron i and teacher neuron j is the squared distance between their incoming
weights (bias included) after the teacher's input channels have been aligned
(Singh & Jaggi's weight-based "wts" variant).

Which architectures: the network is traced with ``torch.fx`` and walked in
execution order. Conv2d (groups=1), Linear and BatchNorm layers are aligned;
ReLU, pooling, dropout, identity and flatten pass channels through; a
residual ``add`` ties its two inputs to one channel space (so a ResNet stage
and its shortcut share one permutation). That covers ``conv4`` and the
CIFAR ResNets. Anything else (concatenation, attention, grouped convs,
reshapes other than flatten) raises a one-line error; so does a zoo of mixed
architectures, which has no layer-wise correspondence at all. For a channel
space written by several layers (a ResNet stage), the cost sums over those
of its writers whose inputs are already aligned when it is matched (the
shortcut and the stage's first block); after alignment every teacher is
checked to compute what it computed before.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from purer_plugins.initializers import OTAOptions
from purer_plugins.initializers.average import load_mean, same_architecture_states
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from purer.api import Initializer, Teacher, head_state_keys

# Modules and functions that keep channel c in channel c.
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Identity,
                 nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.dropout, torch.nn.functional.gelu}
_PASS_METHODS = {"relu", "contiguous", "clone"}
_ADD = {operator.add, torch.add, operator.iadd}
_FLATTEN = {torch.flatten}

FIXED = -1  # the channel space of the input image or of the logits: never permuted


class OTAError(ValueError):
    """The architecture is outside what the alignment walk understands."""


@dataclass
class Layer:
    """One aligned tensor owner: a conv/linear (in and out spaces) or a BN (its space)."""

    name: str
    kind: str  # "conv", "linear" or "bn"
    out_space: int
    in_space: int = FIXED
    in_flat: bool = False  # a linear reading a flattened conv map


@dataclass
class Plan:
    """The network as channel spaces and the layers that read and write them."""

    layers: list[Layer] = field(default_factory=list)
    spaces: list[int] = field(default_factory=list)  # permutable spaces, in matching order


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> int:
        self.parent.setdefault(x, x)
        return x

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # keep FIXED as the root so a fixed space stays fixed
            if rb == FIXED:
                ra, rb = rb, ra
            self.parent[rb] = ra


def plan_alignment(model: nn.Module, arch: str = "") -> Plan:
    """Trace ``model`` and name the channel space of every aligned tensor."""
    what = arch or type(model).__name__
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:
        raise OTAError(f"init.ota: cannot trace {what} with torch.fx "
                       f"({type(exc).__name__}); OTA supports conv4 and the CIFAR ResNets") from None
    modules = dict(model.named_modules())
    uf = _UnionFind()
    uf.add(FIXED)
    space: dict[torch.fx.Node, tuple[int, bool]] = {}  # node -> (space, flattened)
    layers: list[Layer] = []
    order: list[int] = []

    def unsupported(node: torch.fx.Node) -> OTAError:
        return OTAError(f"init.ota: {what} uses '{node.target}' ({node.op}), which the "
                        "neuron-alignment walk does not support; OTA supports plain conv nets "
                        "(conv4) and residual nets with additive shortcuts (CIFAR ResNets)")

    def new_space() -> int:
        s = uf.add(len(order))
        order.append(s)
        return s

    for node in graph.nodes:
        if node.op == "placeholder":
            space[node] = (FIXED, False)
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, torch.fx.Node):
                uf.union(FIXED, space[result][0])
        elif node.op == "get_attr":
            raise unsupported(node)
        elif node.op == "call_module":
            mod, src = modules[node.target], node.args[0]
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1:
                    raise unsupported(node)
                s_in, flat = space[src]
                if flat:
                    raise unsupported(node)
                out = new_space()
                layers.append(Layer(node.target, "conv", out, s_in))
                space[node] = (out, False)
            elif isinstance(mod, nn.Linear):
                s_in, flat = space[src]
                out = new_space()
                layers.append(Layer(node.target, "linear", out, s_in, flat))
                space[node] = (out, False)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                layers.append(Layer(node.target, "bn", space[src][0]))
                space[node] = space[src]
            elif isinstance(mod, nn.Flatten):
                space[node] = (space[src][0], True)
            elif isinstance(mod, _PASS_MODULES):
                space[node] = space[src]
            elif isinstance(mod, nn.Sequential) and len(mod) == 0:
                space[node] = space[src]
            else:
                raise unsupported(node)
        elif node.op == "call_function":
            if node.target in _ADD:
                a, b = node.args[0], node.args[1]
                if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) \
                        or space[a][1] != space[b][1]:
                    raise unsupported(node)
                uf.union(space[a][0], space[b][0])
                space[node] = space[a]
            elif node.target in _FLATTEN:
                space[node] = (space[node.args[0]][0], True)
            elif node.target in _PASS_FUNCTIONS:
                space[node] = space[node.args[0]]
            else:
                raise unsupported(node)
        elif node.op == "call_method":
            if node.target == "flatten":
                space[node] = (space[node.args[0]][0], True)
            elif node.target in _PASS_METHODS:
                space[node] = space[node.args[0]]
            else:
                raise unsupported(node)
    for layer in layers:
        layer.out_space = uf.find(layer.out_space)
        layer.in_space = uf.find(layer.in_space)
    spaces: list[int] = []
    for s in order:
        root = uf.find(s)
        if root != FIXED and root not in spaces:
            spaces.append(root)
    return Plan(layers, spaces)


def _permute_in(weight: Tensor, perm: Tensor, flat: bool) -> Tensor:
    """Reorder a layer's input channels; for a linear on a flattened C x H x W
    map each channel is a block of H*W consecutive inputs."""
    if not flat:
        return weight[:, perm]
    block = weight.shape[1] // perm.numel()
    index = (perm[:, None] * block + torch.arange(block)).flatten()
    return weight[:, index]


def align_state(plan: Plan, anchor: dict[str, Tensor], state: dict[str, Tensor]
                ) -> tuple[dict[str, Tensor], dict[int, Tensor]]:
    """``state`` with its neurons permuted to match ``anchor``'s; also the permutations."""
    out = {k: v.clone() for k, v in state.items()}
    perms: dict[int, Tensor] = {}

    def in_aligned(layer: Layer) -> bool:
        return layer.in_space == FIXED or layer.in_space in perms

    for s in plan.spaces:
        writers = [la for la in plan.layers if la.kind in ("conv", "linear") and la.out_space == s]
        ready = [la for la in writers if in_aligned(la)] or writers
        cost = 0.0
        for la in ready:
            a, b = _rows(anchor, la), _rows(out, la, perms)
            cost = cost + torch.cdist(a.double(), b.double()).pow(2)
        _, cols = linear_sum_assignment(cost.cpu().numpy())
        perms[s] = torch.as_tensor(cols, dtype=torch.long)
    for la in plan.layers:
        prefix = la.name + "."
        for key in [k for k in out if k.startswith(prefix) and "." not in k[len(prefix):]]:
            value = out[key]
            if value.dim() == 0:
                continue  # num_batches_tracked
            if la.out_space in perms:
                value = value[perms[la.out_space]]
            if key.endswith("weight") and la.kind != "bn" and la.in_space in perms:
                value = _permute_in(value, perms[la.in_space], la.in_flat)
            out[key] = value
    return out, perms


def _rows(state: dict[str, Tensor], layer: Layer, perms: dict[int, Tensor] | None = None) -> Tensor:
    """Incoming weights of each output neuron (inputs aligned when known), one row each."""
    weight = state[f"{layer.name}.weight"].detach().cpu()
    if perms is not None and layer.in_space in perms:
        weight = _permute_in(weight, perms[layer.in_space], layer.in_flat)
    rows = weight.reshape(weight.shape[0], -1)
    bias = state.get(f"{layer.name}.bias")
    if bias is not None:
        rows = torch.cat([rows, bias.detach().cpu().view(-1, 1)], dim=1)
    return rows


class OTAInit(Initializer):
    """Align every teacher to the anchor (exact OT = assignment), then average."""

    Options = OTAOptions

    def initialize(self, model: nn.Module, teachers: Sequence[Teacher]) -> None:
        states = same_architecture_states(model, teachers, "ota")
        states = [{k: v.detach().cpu() for k, v in s.items()} for s in states]
        if self.options.anchor >= len(states):
            raise ValueError(f"init.ota: anchor {self.options.anchor} but the zoo has "
                             f"{len(states)} teachers")
        _check_shapes(model, states)
        plan = plan_alignment(model, teachers[0].arch)
        anchor = states[self.options.anchor]
        aligned = []
        for teacher, state in zip(teachers, states):
            fused, _ = align_state(plan, anchor, state) if state is not anchor else (state, {})
            if self.options.verify and state is not anchor:
                _verify(teacher, fused)
            aligned.append(fused)
        load_mean(model, aligned, "ota")  # the element-wise mean, exactly as `average` takes it


def _check_shapes(model: nn.Module, states: list[dict[str, Tensor]]) -> None:
    """Same architecture name but other options (width, ...) cannot be aligned."""
    head = head_state_keys(model)
    for key, value in model.state_dict().items():
        if key in head or not value.is_floating_point():
            continue
        for i, state in enumerate(states):
            if key not in state or state[key].shape != value.shape:
                got = tuple(state[key].shape) if key in state else "nothing"
                raise ValueError(f"init.ota: teacher {i} has {got} for '{key}', the meta-model "
                                 f"{tuple(value.shape)} (different architecture options?)")


def _verify(teacher: Teacher, aligned: dict[str, Tensor]) -> None:
    """The aligned weights must compute the teacher's function (eval mode)."""
    original = copy.deepcopy(teacher.model).cpu().float().eval()
    permuted = copy.deepcopy(original)
    permuted.load_state_dict(aligned)
    size = teacher.space.size
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), permuted(x)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(a.abs().max()))):
        raise OTAError(f"init.ota: aligning teacher {teacher.name} ({teacher.arch}) changed its "
                       "outputs: the architecture has channel couplings the walk does not see")
