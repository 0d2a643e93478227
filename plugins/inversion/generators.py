"""Generator inverters: pseudo data drawn from a conditional generator instead
of stored as learnable pixels (docs/inverters.md).

``generator`` (CMI-style, Fang et al. 2021) trains one small conditional
generator per teacher on that teacher's inversion loss. ``meta-generator``
(FREE-style, Wei et al. 2024) keeps one generator shared by all teachers and
adapts a copy of it to a teacher for a few steps whenever that teacher's data
is renewed; a Reptile update moves the shared weights towards the adapted
copies, so the shared generator becomes a starting point from which any
teacher, one that joins late included, is inverted in few steps.

Both minimise the run's :class:`~purer.api.InversionLoss` (the registered
terms, so a plugin term shapes them as it shapes ``deepinv``) and take the
gradient switch's reversed outer loss through the images into their weights.
Images live in each teacher's normalised input space, as ``deepinv``'s memory
does; :meth:`bank` maps them into the meta-model's space.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from purer_plugins.inversion import GeneratorOptions, MetaGeneratorOptions
from purer_plugins.inversion.deepinv import jitter_pixels
from torch import Tensor, nn
from torch.func import functional_call

from purer.api import (
    ClassBank,
    ConfigError,
    InputSpace,
    InversionContext,
    InversionLoss,
    Inverter,
    Teacher,
    load_optimizer_state,
    teacher_view,
    warn_if_slow_bf16,
)


class ConditionalGenerator(nn.Module):
    """Noise and a class embedding to an image in [0, 1]: a linear projection
    to a quarter-size map, then two upsampling conv blocks with batch norm.

    Batch norm uses the statistics of the batch it sees (no running
    statistics): a batch is always one teacher's whole class-balanced set, so
    generation needs no train/eval switch and the module has no buffers,
    which keeps :func:`torch.func.functional_call` on it simple.
    """

    def __init__(self, classes: int, noise: int, width: int, size: int) -> None:
        super().__init__()
        self.width, self.size, self.base = width, size, -(-size // 4)
        self.embed = nn.Embedding(classes, noise)
        self.project = nn.Linear(2 * noise, 2 * width * self.base ** 2)

        def norm(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, track_running_stats=False)

        self.body = nn.Sequential(
            norm(2 * width), nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False), norm(width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1, bias=False), norm(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, noise: Tensor, labels: Tensor, size: int | None = None) -> Tensor:
        h = self.project(torch.cat([noise, self.embed(labels)], 1))
        x = self.body(h.view(-1, 2 * self.width, self.base, self.base))
        size = size or self.size
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x


class _GeneratedData(Inverter):
    """What both generator inverters share: the teachers' views, their loss on
    generated images, the cache of the latest images and the bank."""

    options: GeneratorOptions | MetaGeneratorOptions

    def _setup_common(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
                      generator: torch.Generator, inversion: InversionLoss) -> None:
        self.teachers: list[Teacher] = []
        self.per_class, self.device, self.generator, self.inversion = (
            images_per_class, device, generator, inversion)
        self.targets: list[Tensor] = []
        self.views: list = []
        self._pixel_stats: list[tuple[Tensor, Tensor]] = []
        self._shared: dict[str, tuple] = {}
        if self.options.precision == "bf16":
            warn_if_slow_bf16("inverter.precision", device)
        self._add_views(teachers)

    def _add_views(self, teachers: Sequence[Teacher]) -> None:
        check = torch.Generator().manual_seed(0)  # not the run's generator
        for t in teachers:
            if self.options.channels_last:
                t.model.to(memory_format=torch.channels_last)
            self.views.append(teacher_view(
                t.model, t.bn_layers, fold=self.options.fold_batch_norm, shared=self._shared,
                example=torch.randn(2, 3, t.space.size, t.space.size, generator=check).to(self.device)))
            self.targets.append(torch.arange(t.num_classes, device=self.device)
                                .repeat_interleave(self.per_class))
            self._pixel_stats.append((torch.tensor(t.space.mean, device=self.device).view(3, 1, 1),
                                      torch.tensor(t.space.std, device=self.device).view(3, 1, 1)))
            self.teachers.append(t)
        self.class_ids = torch.tensor([c for t in self.teachers for c in t.class_ids], device=self.device)

    def _normalise(self, k: int, pixels: Tensor) -> Tensor:
        mean, std = self._pixel_stats[k]
        return (pixels - mean) / std

    def _noise(self, k: int) -> Tensor:
        """Fresh noise for teacher ``k``'s whole set, from the run's generator."""
        return torch.randn(self.teachers[k].num_classes * self.per_class, self.options.noise,
                           generator=self.generator)

    def _teacher_loss(self, k: int, images: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher ``k``'s weighted inversion loss on ``images`` (its normalised
        space), jittered by ``pixels``; and the detached term values."""
        inputs = images.flatten(2).index_select(2, pixels).view(images.shape)
        if self.options.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if self.options.precision == "bf16" else nullcontext())
        with autocast:
            logits, stats = self.views[k](inputs)
        return self.inversion(InversionContext(self.teachers[k], images, inputs, logits,
                                               self.targets[k], stats))

    def _log(self, total: Tensor, parts: Tensor, extra_loss: Tensor | None) -> dict[str, Tensor]:
        logged = dict(zip(self.inversion.names, parts.unbind()))
        logged["total"] = total
        if extra_loss is not None:
            logged["reversed"] = extra_loss.detach()
        return logged

    def inversion_loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The summed loss of the current data (no jitter): what the
        teachers make of the images :meth:`bank` returns (before replay)."""
        no_jitter = jitter_pixels([t.space.size for t in self.teachers], 0, self.generator)
        pixels = no_jitter.to(self.device).split([t.space.size ** 2 for t in self.teachers])
        results = [self._teacher_loss(k, self.images[k], pixels[k]) for k in range(len(self.teachers))]
        return sum(r[0] for r in results), dict(zip(self.inversion.names, sum(r[1] for r in results).unbind()))

    def _mix_replay(self, k: int, images: Tensor) -> Tensor:
        """``images`` [C, n, ...] with the first share of each class's slots
        taken from one earlier generation (cycled step by step)."""
        replay = self.replay[k]
        keep = round(self.options.replay_share * self.per_class)
        if not replay or not keep:
            return images
        old = replay[self.cursor % len(replay)].view_as(images)
        return torch.cat([old[:, :keep], images[:, keep:]], 1)

    def _remember(self, k: int, previous: Tensor) -> None:
        if self.options.replay:
            self.replay[k] = [*self.replay[k], previous][-self.options.replay:]

    def bank(self, space: InputSpace, *, detach: bool) -> ClassBank:
        parts = []
        for k, teacher in enumerate(self.teachers):
            x = self.images[k] if detach else self._differentiable_images(k)
            x = self._mix_replay(k, x.view(teacher.num_classes, self.per_class, *x.shape[1:]))
            parts.append(teacher.space.convert(x, space))
        return ClassBank(torch.cat(parts) if len(parts) > 1 else parts[0], self.class_ids)

    def teacher_images(self) -> list[Tensor]:
        return [x.view(t.num_classes, self.per_class, *x.shape[1:])
                for t, x in zip(self.teachers, self.images)]

    def prepare_cuda_graph(self) -> None:
        raise ConfigError(f"train.cuda_graph: inverter '{self.name or type(self).__name__}' keeps "
                          "Python-side state (noise, replay memory) that a CUDA graph cannot replay; "
                          "set train.cuda_graph = false or \"auto\"")

    def _differentiable_images(self, k: int) -> Tensor:
        raise NotImplementedError


class GeneratorInverter(_GeneratedData):
    """One conditional generator per teacher, one Adam step per outer step.

    Per teacher rather than shared: each teacher keeps its own class count,
    input size and normalisation without any conditioning on the teacher,
    teachers never compete for one network's capacity, and the step is the
    same sum over teachers as ``deepinv``'s. The shared network with fast
    per-teacher adaptation is ``meta-generator``.
    """

    Options = GeneratorOptions

    def setup(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
              generator: torch.Generator, inversion: InversionLoss) -> None:
        self._setup_common(teachers, images_per_class, device, generator, inversion)
        o = self.options
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # weights from the run's stream, global RNG untouched
            torch.manual_seed(seed)
            self.nets = nn.ModuleList([ConditionalGenerator(t.num_classes, o.noise, o.width, t.space.size)
                                       for t in self.teachers]).to(device)
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=o.lr, betas=o.betas)
        self.noise = [self._noise(k).to(device) for k in range(len(self.teachers))]
        with torch.no_grad():
            self.images = [self._generate(k, self.noise[k]) for k in range(len(self.teachers))]
        self.replay: list[list[Tensor]] = [[] for _ in self.teachers]
        self.cursor = 0

    def _generate(self, k: int, noise: Tensor) -> Tensor:
        return self._normalise(k, self.nets[k](noise, self.targets[k]))

    def _differentiable_images(self, k: int) -> Tensor:
        return self._generate(k, self.noise[k])

    def draw(self) -> dict[str, Tensor]:
        noise = torch.cat([self._noise(k) for k in range(len(self.teachers))])
        return {"noise": noise, "pixels": jitter_pixels([t.space.size for t in self.teachers],
                                                         self.options.jitter, self.generator)}

    def step(self, extra_loss: Tensor | None, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """One Adam step of every teacher's generator on its inversion loss
        for fresh noise (plus ``extra_loss``, which reached the weights
        through :meth:`bank`), then the images of that noise under the new
        weights become the data. Each teacher is differentiated right after
        its forward pass, so only one teacher's activations are alive."""
        draws = draws or {k: v.to(self.device) for k, v in self.draw().items()}
        noise = draws["noise"].split([t.num_classes * self.per_class for t in self.teachers])
        pixels = draws["pixels"].split([t.space.size ** 2 for t in self.teachers])
        total = torch.zeros((), device=self.device)
        parts = torch.zeros(len(self.inversion.names), device=self.device)
        grads = []
        for k, net in enumerate(self.nets):
            loss, values = self._teacher_loss(k, self._generate(k, noise[k]), pixels[k])
            grads.append(list(torch.autograd.grad(loss, list(net.parameters()))))
            total, parts = total + loss.detach(), parts + values
        if extra_loss is not None:
            flat = [p for net in self.nets for p in net.parameters()]
            extra = iter(torch.autograd.grad(extra_loss, flat, allow_unused=True))
            grads = [[g if (e := next(extra)) is None else g + e for g in own] for own in grads]
        for net, own in zip(self.nets, grads):
            for p, g in zip(net.parameters(), own):
                p.grad = g
        self.optimizer.step()
        with torch.no_grad():
            for k in range(len(self.teachers)):
                self._remember(k, self.images[k])
                self.images[k] = self._generate(k, noise[k])
        self.noise = list(noise)
        self.cursor += 1
        return self._log(total, parts, extra_loss)

    def state_dict(self) -> dict:
        return {"nets": dict(self.nets.state_dict()), "optimizer": self.optimizer.state_dict(),
                "noise": list(self.noise), "images": list(self.images),
                "replay": [list(r) for r in self.replay], "cursor": torch.tensor(self.cursor)}

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["nets"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.noise = [n.to(self.device) for n in state["noise"]]
        self.images = [x.to(self.device) for x in state["images"]]
        self.replay = [[x.to(self.device) for x in r] for r in state["replay"]]
        self.cursor = int(state["cursor"])


class MetaGenerator(_GeneratedData):
    """One meta-generator for all teachers, adapted per teacher.

    Each outer step draws ``teachers_per_step`` teachers; for each, a copy of
    the meta-generator takes ``adapt_steps`` Adam steps on that teacher's
    inversion loss and its images replace that teacher's data. The other
    teachers keep their latest images (a memory of adapted data, as in
    FREE). The meta-weights then move by ``outer``: ``reptile`` takes
    ``outer_lr`` of the way towards the mean adapted copy; ``fomaml`` (the
    first-order MAML update FREE uses) takes an Adam step of rate
    ``outer_lr`` along the mean gradient of the adapted copies' last step.

    The reversed outer loss reaches the meta-weights through images the
    meta-generator itself generates (:meth:`bank` with ``detach=False``); its
    gradient joins the first adaptation step of every drawn teacher under
    ``reptile`` and the meta-gradient under ``fomaml``, so the starting point
    of every adaptation moves towards harder data.
    """

    Options = MetaGeneratorOptions
    options: MetaGeneratorOptions

    def setup(self, teachers: Sequence[Teacher], images_per_class: int, device: torch.device,
              generator: torch.Generator, inversion: InversionLoss) -> None:
        self._setup_common(teachers, images_per_class, device, generator, inversion)
        o = self.options
        classes = o.max_classes or max(t.num_classes for t in self.teachers)
        size = o.size or max(t.space.size for t in self.teachers)
        self._check_fits(self.teachers, classes)
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ConditionalGenerator(classes, o.noise, o.width, size).to(device)
        self.outer = (torch.optim.Adam(self.net.parameters(), lr=o.outer_lr, betas=o.betas)
                      if o.outer == "fomaml" else None)
        self.noise: list[Tensor] = []
        self.images: list[Tensor] = []
        self.replay: list[list[Tensor]] = []
        self.cursor = 0
        self._start(len(self.teachers))

    def _check_fits(self, teachers: Sequence[Teacher], classes: int) -> None:
        wide = [t.name for t in teachers if t.num_classes > classes]
        if wide:
            raise ConfigError(f"inverter.max_classes={classes}: teacher(s) {', '.join(wide)} have more "
                              "classes; raise inverter.max_classes")

    def _start(self, count: int) -> None:
        """Noise and first images (the meta-generator's, unadapted) for the
        last ``count`` teachers."""
        theta = self.meta_params()
        for k in range(len(self.teachers) - count, len(self.teachers)):
            self.noise.append(self._noise(k).to(self.device))
            with torch.no_grad():
                self.images.append(self._generate(theta, k, self.noise[k]))
            self.replay.append([])

    def add_teachers(self, teachers: Sequence[Teacher]) -> None:
        """Teachers that join a running meta-training: the meta-generator is
        kept as it is; their first data is its output, adapted when drawn."""
        self._check_fits(teachers, self.net.embed.num_embeddings)
        self._add_views(teachers)
        self._start(len(teachers))

    def meta_params(self) -> dict[str, Tensor]:
        return dict(self.net.named_parameters())

    def _generate(self, params: dict[str, Tensor], k: int, noise: Tensor) -> Tensor:
        pixels = functional_call(self.net, params, (noise, self.targets[k], self.teachers[k].space.size))
        return self._normalise(k, pixels)

    def _differentiable_images(self, k: int) -> Tensor:
        return self._generate(self.meta_params(), k, self.noise[k])

    def draw(self) -> dict[str, Tensor]:
        count = min(self.options.teachers_per_step, len(self.teachers))
        chosen = torch.randperm(len(self.teachers), generator=self.generator)[:count]
        noise = torch.cat([self._noise(int(k)) for k in chosen])
        sizes = [self.teachers[int(k)].space.size for k in chosen for _ in range(self.options.adapt_steps)]
        return {"teachers": chosen, "noise": noise,
                "pixels": jitter_pixels(sizes, self.options.jitter, self.generator)}

    def adapt(self, k: int, noise: Tensor, pixels: Sequence[Tensor], steps: int | None = None,
              first_grads: Sequence[Tensor | None] | None = None
              ) -> tuple[dict[str, Tensor], list[Tensor], Tensor, list[Tensor]]:
        """A copy of the meta-weights after ``steps`` Adam steps on teacher
        ``k``'s loss for ``noise`` (jitter ``pixels[j]`` at step j): the
        adapted weights, the loss before each step, the last step's term
        values and its gradient (``first_grads`` is added at step 0)."""
        fast = {n: p.detach().clone().requires_grad_() for n, p in self.meta_params().items()}
        optimizer = torch.optim.Adam(fast.values(), lr=self.options.inner_lr, betas=self.options.betas)
        losses, values, grads = [], None, []
        for j in range(steps if steps is not None else self.options.adapt_steps):
            loss, values = self._teacher_loss(k, self._generate(fast, k, noise), pixels[j % len(pixels)])
            grads = list(torch.autograd.grad(loss, list(fast.values())))
            if j == 0 and first_grads is not None:
                grads = [g if e is None else g + e for g, e in zip(grads, first_grads)]
            for p, g in zip(fast.values(), grads):
                p.grad = g
            optimizer.step()
            losses.append(loss.detach())
        return fast, losses, values, grads

    def step(self, extra_loss: Tensor | None, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        draws = draws or {k: v.to(self.device) for k, v in self.draw().items()}
        chosen = [int(k) for k in draws["teachers"].tolist()]
        noise = draws["noise"].split([self.teachers[k].num_classes * self.per_class for k in chosen])
        steps = self.options.adapt_steps
        pixels = draws["pixels"].split([self.teachers[k].space.size ** 2 for k in chosen for _ in range(steps)])
        theta = self.meta_params()
        reptile = self.options.outer == "reptile"
        extra = None
        if extra_loss is not None:  # it reached the meta-weights through bank(detach=False)
            extra = torch.autograd.grad(extra_loss, list(theta.values()), allow_unused=True)
        moved = {n: torch.zeros_like(p) for n, p in theta.items()}
        total = torch.zeros((), device=self.device)
        parts = torch.zeros(len(self.inversion.names), device=self.device)
        for i, k in enumerate(chosen):
            fast, losses, values, last = self.adapt(k, noise[i], pixels[i * steps:(i + 1) * steps],
                                                    first_grads=extra if reptile else None)
            with torch.no_grad():
                for (n, p), g in zip(fast.items(), last):
                    moved[n] += p - theta[n] if reptile else g
                self._remember(k, self.images[k])
                self.images[k] = self._generate(fast, k, noise[i])
            self.noise[k] = noise[i]
            total, parts = total + losses[-1], parts + values
        with torch.no_grad():
            if reptile:
                for n, p in theta.items():
                    p += self.options.outer_lr / len(chosen) * moved[n]
            else:
                for (n, p), e in zip(theta.items(), extra or [None] * len(theta)):
                    p.grad = moved[n] / len(chosen) + (0 if e is None else e)
        if self.outer is not None:
            self.outer.step()
        self.cursor += 1
        return self._log(total, parts, extra_loss)

    def state_dict(self) -> dict:
        state = {"net": dict(self.net.state_dict()), "noise": list(self.noise), "images": list(self.images),
                 "replay": [list(r) for r in self.replay], "cursor": torch.tensor(self.cursor)}
        if self.outer is not None:
            state["outer"] = self.outer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Also from a run with fewer teachers (the first ones of this zoo):
        the teachers it did not have keep their fresh start."""
        self.net.load_state_dict(state["net"])
        known = len(state["noise"])
        if known > len(self.teachers):
            raise ConfigError(f"inverter: the checkpoint holds {known} teachers, the zoo {len(self.teachers)}")
        self.noise[:known] = [n.to(self.device) for n in state["noise"]]
        self.images[:known] = [x.to(self.device) for x in state["images"]]
        self.replay[:known] = [[x.to(self.device) for x in r] for r in state["replay"]]
        self.cursor = int(state["cursor"])
        if self.outer is not None and "outer" in state:
            load_optimizer_state(self.outer, state["outer"])
