"""The built-in meta-learners: ``maml`` (Finn et al. 2017, the paper's Eq. 1).

This module declares them with their options; the implementations are
imported when first used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from purer.api import Options, Workers, hookimpl


class MAMLOptions(Options):
    inner_steps: int = Field(1, ge=0, description="gradient steps of the inner loop")
    inner_lr: float = Field(0.01, gt=0, description="inner-loop step size (alpha)")
    first_order: bool = Field(False, description="drop second-order terms of the outer gradient")
    outer_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the meta-model")
    test_inner_steps: int | None = Field(None, ge=0, description="inner steps at meta-test (default: inner_steps)")
    test_inner_lr: float | None = Field(None, gt=0, description="inner lr at meta-test (default: inner_lr)")
    batch_stats: bool = Field(True, description="BatchNorm uses batch statistics, also at test time")
    test_batching: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="how test tasks are adapted together; auto: loop on CPU, vmap on GPU")
    batch_episodes: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="how the training episodes of a meta step are run: together under vmap "
                            "(per-episode weights become grouped convolutions) or one by one; "
                            "auto: loop on CPU, vmap on GPU")
    native_batch_norm: bool = Field(False, description="differentiate BatchNorm twice with PyTorch's own "
                                                       "double backward (slower on CPU; for comparison)")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="keep the meta-model's weights channels-last (auto: on for CPU)")
    cpu_workers: Workers = Field(
        "auto", description="threads that run a meta step's episodes, and meta-test tasks, side by "
                            "side on a CPU, sharing the intra-op threads (auto: one per torch thread, at "
                            "most 4; 1: one at a time on all threads); the loop paths only")

    @model_validator(mode="after")
    def _vmap_needs_own_batch_norm(self) -> MAMLOptions:
        if self.batch_episodes == "vmap" and self.native_batch_norm:
            raise ValueError("batch_episodes='vmap' needs native_batch_norm=false: PyTorch's batch-norm "
                             "double backward under vmap gives wrong second-order gradients")
        return self



@hookimpl
def register_meta_learners(register) -> None:
    register("maml", "purer_plugins.learners.maml:MAML", options=MAMLOptions)
