"""Curricula: when does the reversed outer loss flow into the memory (§4.2)?

``gradient-switch`` is the paper's loss-based switch: from ``start`` on it
tracks the episode batch's mean query accuracy; when that has not beaten its
running best for ``window`` consecutive outer steps the meta-model has
learned the current memory's tasks, so the switch turns on for one step,
pushing the memory towards harder episodes (Eq. 5-6), and the best and the
counter start over. ``none`` never fires: plain episode inversion (EI).
"""

from __future__ import annotations

import math

from pydantic import Field

from purer.api import Curriculum, Options, hookimpl


class GradientSwitchOptions(Options):
    start: int = Field(4000, ge=0, description="first outer step that may fire")
    window: int = Field(6, ge=1, description="steps without a new best accuracy before firing")
    scale: float = Field(10.0, ge=0, description="lambda: weight of the reversed outer loss")
    fire_at_start: bool = Field(True, description="fire once unconditionally at `start` (reference behaviour)")


class GradientSwitch(Curriculum):
    Options = GradientSwitchOptions

    def __init__(self, options: GradientSwitchOptions | None = None) -> None:
        super().__init__(options)
        self.best = -math.inf
        self.stale = 0
        self.fire_next = False

    def adversarial_scale(self, step: int) -> float:
        return self.options.scale if self.fire_next and step > self.options.start else 0.0

    def observe(self, step: int, accuracy: float) -> None:
        self.fire_next = False
        if step < self.options.start:
            return
        if step == self.options.start and self.options.fire_at_start:
            self.fire_next = True
            return
        if accuracy > self.best:
            self.best, self.stale = accuracy, 0
        else:
            self.stale += 1
        if self.stale >= self.options.window:
            self.fire_next = True
            self.best, self.stale = -math.inf, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale, "fire_next": self.fire_next}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale, self.fire_next = float(state["best"]), int(state["stale"]), bool(state["fire_next"])


class NoCurriculum(Curriculum):
    """Episode inversion without curriculum (the paper's EI ablation)."""

    def adversarial_scale(self, step: int) -> float:
        return 0.0

    def observe(self, step: int, accuracy: float) -> None:
        return None


@hookimpl
def register_curricula(register) -> None:
    register("gradient-switch", GradientSwitch)
    register("none", NoCurriculum)
