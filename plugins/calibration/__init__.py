"""The built-in calibrators, applied at meta-test time after the inner loop:
``none`` (standard meta-testing: the adapted model predicts the queries) and
``icfil`` (the paper's Alg. 2).

This module declares them with their options; the implementations are
imported when first used.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from purer.api import Options, Workers, hookimpl


class ICFILOptions(Options):
    pseudo_per_class: int = Field(2, ge=1, description="pseudo images synthesised per class "
                                  "(2: chosen on meta-val, docs/evaluation.md)")
    synthesis_steps: int = Field(5, ge=0, description="Adam steps on the pseudo images "
                                 "(5: chosen on meta-val, docs/evaluation.md)")
    synthesis_lr: float = Field(0.1, gt=0, description="Adam lr of the pseudo images (init N(0,1))")
    bn_target: Literal["support", "none"] = Field(
        "none", description="stand-in for Eq. 4's running statistics: the real support "
        "batch's per-layer feature mean/var, or no BN targets (the bn term is then zero)")
    jitter: int = Field(2, ge=0, description="random circular shift (px) inside the inversion loss")
    temperature: float = Field(0.1, gt=0, description="Eq. 7 temperature")
    calib_steps: int = Field(1, ge=0, description="Adam steps of the backbone calibration")
    calib_lr: float = Field(1e-3, gt=0, description="Adam lr of the backbone calibration")
    head_steps: int = Field(100, ge=0, description="Adam steps of the new linear head")
    head_lr: float = Field(0.01, gt=0, description="Adam lr of the new linear head")
    head_init: Literal["zero", "default"] = Field(
        "zero", description="new head's init: zeros, or nn.Linear's default (seeded)")
    classifier: Literal["head", "learner"] = Field(
        "head", description="step 3: a new linear head on the calibrated features, or the "
        "meta-learner's own test-time adaptation rerun from the calibrated backbone (e.g. "
        "ProtoNet's prototypes recomputed in the calibrated embedding)")
    batching: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="tasks together (vmap) or one by one; auto: loop on CPU, vmap else")
    threads: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        1, description="intra-op threads while a batch of tasks is adapted and calibrated; "
        "all: the process's (2 threads stalled when another job shared the cores, "
        "docs/evaluation.md)")
    cpu_workers: Workers = Field(
        1, description="on CPU with batching loop: threads the tasks of a batch are spread "
        "over, each with threads // cpu_workers intra-op threads; auto: one per torch thread "
        "(at most 4)")
    channels_last: bool = Field(False, description="NHWC images and weights")
    seed: int = Field(0, description="seed of the pseudo-image noise, jitter and head init")


@hookimpl
def register_calibrators(register) -> None:
    register("none", "purer_plugins.calibration.plain:NoCalibration", options=Options)
    register("icfil", "purer_plugins.calibration.icfil:ICFIL", options=ICFILOptions)
