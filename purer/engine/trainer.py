"""ECI meta-training (paper Alg. 1): the loop, checkpoints, resume, guard.

``ECITrainer.device_step`` is Alg. 1's body and should stay readable on one
screen; ``outer_step`` wraps it: the step's random draws first (on the CPU,
so that a CUDA graph can replay the body with new draws), then the body,
then the curriculum's feedback. Everything around it (validation,
checkpoints, pictures, logging) is bookkeeping that never touches the
random streams the step uses, so a run resumed from a checkpoint replays
the uninterrupted run exactly.

Ctrl-C (SIGINT) never cuts a step in half: while :meth:`ECITrainer.train`
runs, SIGINT only raises a flag, the step in progress finishes with all of
its bookkeeping (metrics line, validation, checkpoint, pictures), its state
is saved, and only then ``KeyboardInterrupt`` is raised. So the saved state
is always a completed step's, and a resumed run replays the uninterrupted
one (docs/engine.md, "Interruption and resume guarantees").

On several processes (``world``, docs/distributed.md) every rank draws the
same random numbers, steps the memory of its own teachers, builds episodes
from the bank gathered from all ranks, and meta-trains on its share of the
episode batch with the meta-gradients summed over the ranks; every decision
that steers the loop (switch, validation, checkpoints, interrupts) is taken
from values equal on all ranks, so their collectives stay in step.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from purer.config import RunConfig
from purer.data.episodes import make_task_list
from purer.distributed import World, balance, forward_cost
from purer.engine import checkpoint as ckpt
from purer.engine.cuda_graph import GraphedStep
from purer.engine.pseudo_episodes import (
    EpisodeDraw,
    OwnerTable,
    build_episodes,
    draw_episodes,
    sample_pseudo_episodes,
)
from purer.errors import ConfigError, DataError, DivergenceError
from purer.evaluation.evaluator import evaluate
from purer.interfaces import Curriculum, Inverter, MetaLearner
from purer.pictures import save_curve, save_grid
from purer.progress import console, progress
from purer.rundir import RunDir
from purer.types import ClassBank, EpisodeBatch, InputSpace, SplitData, Teacher


def class_keys(teachers: list[Teacher]) -> torch.Tensor:
    """One integer per (teacher, class) entry that is equal exactly when the
    real class is: ids are only unique inside a dataset (MH zoos mix two)."""
    keys: dict[tuple[str, int], int] = {}
    return torch.tensor([keys.setdefault((t.dataset, c), len(keys)) for t in teachers for c in t.class_ids])


def read_numbers(values: dict[str, Any]) -> dict[str, float]:
    """Python floats of a step's numbers; all tensors read with one device sync."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    read = dict(zip(tensors, torch.stack([v.detach().double().reshape(()) for v in tensors.values()])
                    .tolist())) if tensors else {}
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _part(draws: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in draws.items() if k.startswith(prefix + ".")}


def _to_cpu(state: Any) -> Any:
    """A nested state with its tensors on the CPU (to pass between ranks)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state


@contextmanager
def _summed_gradients(world: World) -> Iterator[list[bool]]:
    """While the meta-learner takes its outer step: before any optimiser
    steps, its gradients become their sums over the ranks (each rank
    differentiated its own share of the episode batch; the outer loss is a
    sum over episodes). Not DDP: DDP does not synchronise the double
    backward of second-order MAML. Yields a flag list that is non-empty
    when an optimiser stepped."""
    fired: list[bool] = []

    def reduce(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        flat = torch.cat([*(torch.zeros(p.numel(), device=p.device, dtype=p.dtype) if p.grad is None
                            else p.grad.detach().reshape(-1) for p in params),
                          torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype,
                                       device=params[0].device)])
        flat = world.all_reduce_sum(flat)
        offset = 0
        for p, has in zip(params, flat[-len(params):].tolist()):
            part = flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
            if has:  # a parameter no rank reached keeps no gradient, as in one process
                p.grad = part.clone()
        fired.append(True)

    handle = register_optimizer_step_pre_hook(reduce)
    try:
        yield fired
    finally:
        handle.remove()


class ECITrainer:
    """Meta-trains a meta-model on pseudo episodes inverted from a teacher zoo."""

    def __init__(self, config: RunConfig, run: RunDir | None, device: torch.device,
                 teachers: list[Teacher], meta: MetaLearner, inverter: Inverter,
                 curriculum: Curriculum, space: InputSpace, val_split: SplitData | None = None,
                 generator: torch.Generator | None = None, world: World | None = None) -> None:
        """Wire up ready components (``purer.pipeline.build_trainer`` builds
        them from a config). ``world``: the processes that share this run
        (docs/distributed.md); rank 0 alone writes to ``run``."""
        self.config, self.run, self.device = config, run, device
        self.world = world if world is not None else World()
        self.teachers, self.meta, self.inverter, self.curriculum = teachers, meta, inverter, curriculum
        self.space, self.val_split = space, val_split
        self.generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        self.owners = OwnerTable(class_keys(teachers))
        self.val_tasks = None if val_split is None else self._val_task_list(val_split)
        self.step = 0
        self.best: dict[str, Any] = {"step": 0, "val_accuracy": -1.0}
        self.val_history: list[tuple[int, float]] = []
        self.graphed = self._graphed_step(config.train.cuda_graph)
        self.interrupted = False  # a Ctrl-C arrived; stop after the step in progress
        self._running = 0  # the step in progress
        self.sharded = False  # the inverter steps this rank's teachers alone
        self.own = list(range(len(teachers)))  # the teachers this rank's inverter holds
        if self.world.distributed:
            self._distribute()

    def _distribute(self) -> None:
        """Share the teachers out between the ranks by forward cost (so a
        ResNet-18 weighs more than a Conv4), when the inverter can be sharded."""
        size, train = self.world.size, self.config.train
        if train.episode_batch < size:
            raise ConfigError(f"train.episode_batch={train.episode_batch}: a run on {size} processes "
                              f"splits the episode batch, it needs at least {size} episodes")
        if self.graphed is not None:
            raise ConfigError("train.cuda_graph: not available in a run across processes; set it "
                              "to false")
        if len(self.teachers) < size:
            return  # too few teachers to give each rank one: every rank steps all
        costs = [forward_cost(t.model, t.space.size) * t.num_classes for t in self.teachers]
        self.layout = balance(costs, size)
        try:
            self.inverter.shard(self.layout[self.world.rank])
        except ConfigError:
            return
        self.sharded, self.own = True, self.layout[self.world.rank]
        # rows of the gathered bank (rank after rank, each rank's teachers in
        # order) -> the bank of one process (teacher after teacher)
        start = [0]
        for t in self.teachers:
            start.append(start[-1] + t.num_classes)
        gathered = [row for r in range(size) for k in self.layout[r]
                    for row in range(start[k], start[k + 1])]
        position = {row: i for i, row in enumerate(gathered)}
        self._order = torch.tensor([position[row] for row in range(start[-1])], device=self.device)
        self._rows = [sum(self.teachers[k].num_classes for k in own) for own in self.layout]
        self._class_ids = torch.tensor([c for t in self.teachers for c in t.class_ids], device=self.device)

    def _val_task_list(self, split: SplitData):
        t = self.config.train
        try:
            return make_task_list(split, t.way, t.shot, t.query, t.val_tasks,
                                  seed=self.config.eval.seed + 1, dataset=self.config.data.name,
                                  split_name="meta_val")
        except DataError as exc:
            raise DataError(f"{exc} (meta-val tasks of train.way={t.way}, train.shot={t.shot}, "
                            f"train.query={t.query})") from None

    def _graphed_step(self, wanted: bool | str) -> GraphedStep | None:
        """The CUDA-graph runner when ``train.cuda_graph`` asks for it (``auto``:
        on a CUDA device, if both components support it)."""
        if wanted is False or (wanted == "auto" and self.device.type != "cuda"):
            return None
        if self.device.type != "cuda":
            raise ConfigError(f"train.cuda_graph: needs a CUDA device, the run uses {self.device}")
        try:
            self.inverter.prepare_cuda_graph()
            self.meta.prepare_cuda_graph()
        except ConfigError:
            if wanted is True:
                raise
            return None
        return GraphedStep(self.device_step, self.device)

    # ------------------------------------------------------------------ Alg. 1
    def bank(self, *, detach: bool) -> ClassBank:
        """The pseudo images of all teachers; in a sharded run gathered from
        the ranks that own them (differentiably unless ``detach``)."""
        local = self.inverter.bank(self.space, detach=detach)
        if not self.sharded:
            return local
        images = torch.cat(self.world.gather_rows(local.images, self._rows)).index_select(0, self._order)
        return ClassBank(images, self._class_ids)

    def sample(self, count: int, *, detach: bool) -> EpisodeBatch:
        t = self.config.train
        bank = self.bank(detach=detach)
        return sample_pseudo_episodes(bank, self.owners, t.way, t.shot, t.query, count, self.generator)

    def outer_step(self, step: int) -> dict[str, Any]:
        """One iteration of Alg. 1: this step's random draws on the CPU, the
        device work (eager, or replayed from a CUDA graph), the feedback."""
        scale = self.curriculum.adversarial_scale(step)
        draws = self.draw(scale)
        if self.graphed is not None:
            numbers = self.graphed(scale, draws)
        else:
            numbers = self.device_step(scale, {k: v.to(self.device) for k, v in draws.items()})
        record = {"step": step, **read_numbers(numbers), "switch": bool(scale)}
        self.curriculum.observe(step, record["train_accuracy"])
        return record

    def draw(self, scale: float) -> dict[str, torch.Tensor]:
        """Everything random in one outer step, in the order the step uses it."""
        t = self.config.train
        draws = {}
        if scale:
            draws |= _prefixed("hard", self._draw_episodes(1).tensors())
        draws |= _prefixed("inverter", self.inverter.draw())
        draws |= _prefixed("batch", self._draw_episodes(t.episode_batch).tensors())
        return draws

    def device_step(self, scale: float, draws: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Alg. 1's body on drawn indices (on the device); no host sync inside."""
        if self.world.distributed:
            return self._distributed_step(scale, draws)
        shot = self.config.train.shot
        reversed_loss = None
        if scale:  # Gradient switch (Eq. 5): the memory also maximises the outer loss (Eq. 6).
            hard = build_episodes(self.inverter.bank(self.space, detach=False),
                                  EpisodeDraw.from_tensors(_part(draws, "hard")), shot)
            reversed_loss = -scale * self.meta.outer_loss(hard, create_graph=True)[0]
        # Episode inversion: one step of the memory on Eq. 2 summed over teachers.
        inversion = self.inverter.step(reversed_loss, _part(draws, "inverter"))
        # Pseudo episode training: MAML's outer update on a batch of episodes (Eq. 1).
        batch = build_episodes(self.inverter.bank(self.space, detach=True),
                               EpisodeDraw.from_tensors(_part(draws, "batch")), shot)
        outer = self.meta.meta_step(batch)
        return {**{f"inv_{k}": v for k, v in inversion.items()},
                "outer_loss": outer.loss, "train_accuracy": outer.accuracy}

    def _distributed_step(self, scale: float, draws: dict[str, torch.Tensor]) -> dict[str, Any]:
        """:meth:`device_step` on one rank of several: the same draws on every
        rank; the bank gathered from the teachers' owners; this rank's share
        of the episode batch; sums over the ranks of the gradients and numbers."""
        shot, world = self.config.train.shot, self.world
        reversed_loss = None
        if scale:
            bank = self.bank(detach=False)
            if world.is_main or not self.sharded:
                hard = build_episodes(bank, EpisodeDraw.from_tensors(_part(draws, "hard")), shot)
                reversed_loss = -scale * self.meta.outer_loss(hard, create_graph=True)[0]
            else:  # rank 0 computes the reversed loss; the others pass its gradient on to their memory
                reversed_loss = bank.images.sum() * 0.0
        inversion = self.inverter.step(reversed_loss, _part(draws, "inverter"))
        start, stop = world.split(self.config.train.episode_batch)
        mine = {k: v[start:stop] for k, v in _part(draws, "batch").items()}
        batch = build_episodes(self.bank(detach=True), EpisodeDraw.from_tensors(mine), shot)
        with _summed_gradients(world) as fired:
            outer = self.meta.meta_step(batch)
        if not fired:  # a learner without an optimiser (e.g. Reptile) moved its weights itself
            with torch.no_grad():
                for p in self.meta.model.parameters():
                    p.copy_(world.all_reduce_sum(p) / world.size)
        names = [f"inv_{k}" for k in inversion]
        local = [torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in inversion.values()]
        if not self.sharded:  # every rank inverted all teachers: the same numbers everywhere
            local = [v / world.size for v in local]
        count = stop - start
        local += [torch.as_tensor(outer.loss, dtype=torch.float64, device=self.device),
                  torch.as_tensor(outer.accuracy, dtype=torch.float64, device=self.device) * count]
        total = world.all_reduce_sum(torch.stack([v.detach().reshape(()) for v in local]))
        numbers = dict(zip(names, total[: len(names)].unbind()))
        return {**numbers, "outer_loss": total[-2],
                "train_accuracy": total[-1] / self.config.train.episode_batch}

    def _draw_episodes(self, count: int) -> EpisodeDraw:
        t = self.config.train
        return draw_episodes(self.owners, t.way, t.shot, t.query, count, t.shot + t.query, self.generator)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Steps ``self.step + 1 .. train.steps``; returns the best-so-far record.

        Raises ``KeyboardInterrupt`` after a Ctrl-C, once the step it landed
        in is complete and saved (see the module docstring).
        """
        train, main = self.config.train, self.world.is_main
        self.switched = 0  # steps the gradient switch fired on (for the progress lines)
        with progress() as bar, self._deferred_interrupts():
            task = bar.add_task("meta-train", total=train.steps, completed=self.step, status="")
            for step in range(self.step + 1, train.steps + 1):
                self._running = step
                started = time.perf_counter()
                record = self.outer_step(step)
                self.guard(record)
                record["seconds"] = time.perf_counter() - started
                self.step = step
                if step % train.val_every == 0 or step == train.steps:
                    record["val_accuracy"] = self.validate(step)
                if main:
                    self.run.log(record)
                if step % train.checkpoint_every == 0 or step == train.steps:
                    self.save()
                if step % train.image_every == 0 or step == train.steps:
                    self.save_pictures(step)
                bar.update(task, completed=step, status=self._status(record))
                if self.world.any(self.interrupted):  # every rank stops after the same step
                    self.interrupted = True
                    if self.world.broadcast_object(self.last_saved() if main else None) != step:
                        self.save()
                    raise KeyboardInterrupt
        return self.best

    @contextmanager
    def _deferred_interrupts(self) -> Iterator[None]:
        """While training, SIGINT sets :attr:`interrupted` instead of raising
        in the middle of whatever runs (only the main thread can install a
        handler; elsewhere SIGINT never reaches this thread anyway)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def defer(signum: int, frame: object) -> None:
            if self.interrupted:
                console.print(f"interrupt: already stopping after step {self._running}",
                              highlight=False, soft_wrap=True)
                return
            self.interrupted = True
            console.print(f"interrupt: finishing step {self._running} (its validation and "
                          "checkpoint included), then saving and stopping", highlight=False,
                          soft_wrap=True)

        previous = signal.signal(signal.SIGINT, defer)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _status(self, r: dict[str, Any]) -> str:
        # A line is printed every few seconds, and the switch fires on single
        # steps: the count since the start says what metrics.jsonl holds.
        self.switched += bool(r["switch"])
        switch = "[red]on[/]" if r["switch"] else "off"
        plural = "s" if self.switched > 1 else ""
        fired = f" (fired on {self.switched} step{plural} since launch)" if self.switched else ""
        val = f" val {r['val_accuracy']:.1f}%" if "val_accuracy" in r else ""
        return (f"loss {r['outer_loss']:.3f} acc {100 * r['train_accuracy']:.1f}% "
                f"switch {switch}{fired}{val}")

    def _per_teacher(self, mine: list[Any]) -> list[Any]:
        """One value per teacher of the zoo, from each rank's values for the
        teachers it owns (a collective: every rank calls it)."""
        everyone: list[Any] = [None] * len(self.teachers)
        for own, values in self.world.gather_objects((self.own, mine)):
            for k, value in zip(own, values):
                everyone[k] = value
        return everyone

    def guard(self, record: dict[str, Any]) -> None:
        """Stop on NaN/Inf or an exploding memory, before anything is saved.

        Covers everything a checkpoint would keep as "last good": the logged
        numbers, the memory (per teacher) and the meta-model's parameters and
        buffers. A non-finite loss is traced to the teacher it came from when
        one teacher's memory or logits are the non-finite ones.
        """
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                self._diverged(step, key, value, self._culprit_teacher())
        images = self.inverter.teacher_images()
        tensors = {k: v for k, v in self.meta.model.state_dict().items()
                   if v.is_floating_point() and v.numel()}
        # one device sync for all: the |max| (NaN if any) of each teacher's memory and of
        # each of the meta-model's tensors
        read = torch.stack([x.detach().abs().amax().float()
                            for x in [*images, *tensors.values()]]).tolist()
        if self.sharded:  # every rank judges every teacher's memory alike
            maxima = self._per_teacher(read[:len(images)])
            read = maxima + read[len(images):]
            images = maxima
        for teacher, value in zip(self.teachers, read):
            if not value < self.config.train.max_memory_abs:
                self._diverged(step, f"memory |max| of teacher '{teacher.name}'", value)
        for name, value in zip(tensors, read[len(images):]):
            if not math.isfinite(value):
                self._diverged(step, f"meta-model '{name}'", "not finite")

    @torch.no_grad()
    def _culprit_teacher(self) -> str | None:
        """The teacher whose memory, or whose logits on its memory, are not finite."""
        owned = [self.teachers[k] for k in self.own]
        for teacher, images in zip(owned, self.inverter.teacher_images()):
            if not bool(torch.isfinite(images).all()):
                return f"teacher '{teacher.name}': its memory is not finite"
        for teacher, images in zip(owned, self.inverter.teacher_images()):
            try:
                logits = teacher.model(images.reshape(-1, *images.shape[2:])[:8])
            except Exception:  # a diagnosis only: the divergence error must still come out
                continue
            if not bool(torch.isfinite(logits).all()):
                return f"teacher '{teacher.name}': its logits on its memory are not finite"
        return None

    def _diverged(self, step: int, component: str, value: object, cause: str | None = None) -> None:
        if self.world.is_main:
            self.run.log({"step": step, "diverged": component, "value": repr(value),
                          **({"cause": cause} if cause else {})})
        kept = f"step {self.last_saved()}" if self.last_saved() else "none yet"
        because = f" ({cause})" if cause else ""
        raise DivergenceError(f"step {step}: {component} is {value}{because}; stopped, the last "
                              f"good checkpoint ({kept}) is kept in {self.run.checkpoints}")

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, step: int) -> float:
        result = evaluate(self.meta, self.val_tasks, self.val_split, self.device,
                          batch_tasks=self.config.eval.batch_tasks, description="meta-val",
                          world=self.world)
        self.val_history.append((step, result.accuracy))
        improved = result.accuracy > self.best["val_accuracy"]
        if improved:
            self.best = {"step": step, "val_accuracy": result.accuracy}
        if not self.world.is_main:
            return result.accuracy
        if improved:
            ckpt.save_state(self.run.checkpoints, f"best-{step}", self.meta.test_state_dict(),
                            pointer="best", info=self.best)
        steps, accs = zip(*self.val_history)
        save_curve(steps, accs, self.run.images / "val_accuracy.png",
                   title="meta-val accuracy", ylabel="acc %", xlabel="outer step")
        return result.accuracy

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The run's state; in a sharded run the inverter's is every rank's
        share, gathered (a collective: every rank calls it)."""
        inverter = self.inverter.state_dict()
        if self.sharded:
            inverter = {"shards": self.world.gather_objects(_to_cpu(inverter))}
        return {"meta": self.meta.state_dict(), "inverter": inverter,
                "curriculum": self.curriculum.state_dict(), "rng": ckpt.rng_state(self.generator),
                "step": self.step, "best": self.best, "val_history": [list(v) for v in self.val_history]}

    def save(self) -> None:
        stem = f"step-{self.step}"
        state = self.state()
        if not self.world.is_main:
            return
        ckpt.save_state(self.run.checkpoints, stem, state, pointer="last",
                        info={"step": self.step})

    def last_saved(self) -> int:
        """The step of the checkpoint ``last.json`` names (0: none yet)."""
        stem = ckpt.pointed_stem(self.run.checkpoints, "last")
        return int(stem.split("-")[1]) if stem else 0

    def resume(self) -> None:
        """Continue from the newest intact checkpoint (``last``, else a fallback)."""
        state, _ = ckpt.load_state(self.run.checkpoints, "last", self.device)
        reached = int(state["step"])
        if reached > self.config.train.steps:
            raise ConfigError(f"train.steps={self.config.train.steps}: the run is already at step "
                              f"{reached}; resume with --steps {reached} or more")
        self.meta.load_state_dict(state["meta"])
        inverter = state["inverter"]
        shards = inverter.get("shards") if isinstance(inverter, dict) else None
        if self.sharded != (shards is not None) or (shards is not None and len(shards) != self.world.size):
            saved = f"{len(shards)} processes" if shards is not None else "one process (or unsharded)"
            raise ConfigError(f"{self.run.checkpoints}: the checkpoint was saved by a run on {saved}; "
                              f"resume it the same way (this one has {self.world.size})")
        self.inverter.load_state_dict(shards[self.world.rank] if shards is not None else inverter)
        self.curriculum.load_state_dict(state["curriculum"])
        ckpt.restore_rng(state["rng"], self.generator)
        self.step = int(state["step"])
        self.best = dict(state["best"])
        self.val_history = [(int(s), float(a)) for s, a in state["val_history"]]
        if self.world.is_main:
            self.run.truncate_metrics(self.step)

    # ------------------------------------------------------------------ pictures
    def save_pictures(self, step: int, per_class: int = 8) -> None:
        """One PNG grid per teacher: a row per class (cf. the paper's Fig. 5)."""
        folder = self.run.images / f"memory-step{step:06d}"
        memory = self.inverter.teacher_images()
        if self.sharded:  # rank 0 draws every rank's teachers
            memory = self._per_teacher([x[:, :per_class].cpu() for x in memory])
        if not self.world.is_main:
            return
        for teacher, images in zip(self.teachers, memory):
            shown = images[:, :per_class]
            pixels = teacher.space.denormalize(shown.float()).clamp(0, 1)
            save_grid(pixels.reshape(-1, *pixels.shape[2:]), folder / f"{teacher.name}.png",
                      nrow=shown.shape[1], scale=2)
