"""The built-in inverter (``deepinv``: a learnable memory per teacher, paper
§4.2) and the inversion terms of Eq. 2-4 (``ce``, ``tv``, ``l2``, ``bn``).

This module declares them with their options; the implementations are
imported when first used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from purer.api import Options, Workers, hookimpl


class DeepInvOptions(Options):
    lr: float = Field(0.25, gt=0, description="Adam learning rate of the memory")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of the memory")
    jitter: int = Field(2, ge=0, description="max circular shift (px) per axis, inside the loss only")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="teacher passes in fp32 or under bf16 autocast")
    channels_last: bool = Field(True, description="run teacher convolutions in channels-last layout")
    fold_batch_norm: bool = Field(True, description="fold each teacher's eval-mode BN into its conv and "
                                                     "ReLU after max-pool (same function, faster); "
                                                     "teachers that cannot be traced keep hooks")
    compile: bool = Field(False, description="torch.compile each teacher's loss: a one-off compile "
                                             "per architecture, then faster steps")
    batch_teachers: Literal["auto", "on", "off"] = Field(
        "auto", description="run folded teachers of one architecture and class count together under "
                            "torch.func.vmap (auto: on for GPUs; on CPU the grouped convolutions it "
                            "becomes are slower than one teacher at a time)")
    cpu_workers: Workers = Field(
        "auto", description="threads that differentiate teachers side by side on a CPU, sharing the "
                            "intra-op threads (auto: one per torch thread, at most 4; 1: one teacher at "
                            "a time on all threads). Needs folded teachers; off under compile and on GPUs")


class BNStatisticsOptions(Options):
    first_multiplier: float = Field(1.0, ge=0, description="extra weight of the first BN layer")


@hookimpl
def register_inverters(register) -> None:
    register("deepinv", "purer_plugins.inversion.deepinv:DeepInversion", options=DeepInvOptions)


@hookimpl
def register_inversion_terms(register) -> None:
    register("ce", "purer_plugins.inversion.terms:CrossEntropyTerm", options=Options)
    register("tv", "purer_plugins.inversion.terms:TotalVariationTerm", options=Options)
    register("l2", "purer_plugins.inversion.terms:L2Term", options=Options)
    register("bn", "purer_plugins.inversion.terms:BNStatisticsTerm", options=BNStatisticsOptions)
