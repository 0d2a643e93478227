"""The built-in inverters (``deepinv``: a learnable memory per teacher, paper
§4.2; ``generator`` and ``meta-generator``: conditional generators, see
docs/inverters.md) and the inversion terms of Eq. 2-4 (``ce``, ``tv``,
``l2``, ``bn``) plus ``input-stats``, a prior for teachers without BN.

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


class _GeneratorNetOptions(Options):
    """What the two generator inverters share."""

    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the generators")
    noise: int = Field(32, ge=1, description="length of the noise vector (and of the class embedding)")
    width: int = Field(16, ge=1, description="channels of the generator's last block (twice that before)")
    jitter: int = Field(2, ge=0, description="max circular shift (px) per axis, inside the loss only")
    replay: int = Field(0, ge=0, description="earlier generations kept per teacher (0: none)")
    replay_share: float = Field(0.5, ge=0, le=1, description="share of each class's bank images taken "
                                                             "from one kept generation (with replay > 0)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="teacher passes in fp32 or under bf16 autocast")
    channels_last: bool = Field(True, description="run teacher convolutions in channels-last layout")
    fold_batch_norm: bool = Field(True, description="fold each teacher's eval-mode BN into its conv "
                                                     "(same function, faster)")


class GeneratorOptions(_GeneratorNetOptions):
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of each teacher's generator")


class MetaGeneratorOptions(_GeneratorNetOptions):
    inner_lr: float = Field(1e-2, gt=0, description="Adam learning rate of a teacher's adaptation")
    adapt_steps: int = Field(5, ge=1, description="Adam steps that adapt the meta-generator to a teacher")
    outer: Literal["reptile", "fomaml"] = Field(
        "reptile", description="meta-update: reptile (towards the mean adapted weights) or fomaml "
                               "(Adam on the adapted copies' last gradient, as FREE)")
    outer_lr: float = Field(0.5, gt=0, le=1, description="reptile: share of the way towards the mean "
                                                          "adapted weights; fomaml: Adam learning rate")
    teachers_per_step: int = Field(2, ge=1, description="teachers adapted (their data renewed) per outer step")
    max_classes: int | None = Field(None, ge=1, description="class embeddings of the meta-generator "
                                                            "(default: the zoo's largest teacher; room "
                                                            "for teachers that join later)")
    size: int | None = Field(None, ge=4, description="output size before resizing to each teacher "
                                                     "(default: the zoo's largest input)")


class BNStatisticsOptions(Options):
    first_multiplier: float = Field(1.0, ge=0, description="extra weight of the first BN layer")


@hookimpl
def register_inverters(register) -> None:
    register("deepinv", "purer_plugins.inversion.deepinv:DeepInversion", options=DeepInvOptions)
    register("generator", "purer_plugins.inversion.generators:GeneratorInverter", options=GeneratorOptions)
    register("meta-generator", "purer_plugins.inversion.generators:MetaGenerator",
             options=MetaGeneratorOptions)


@hookimpl
def register_inversion_terms(register) -> None:
    register("ce", "purer_plugins.inversion.terms:CrossEntropyTerm", options=Options)
    register("tv", "purer_plugins.inversion.terms:TotalVariationTerm", options=Options)
    register("l2", "purer_plugins.inversion.terms:L2Term", options=Options)
    register("bn", "purer_plugins.inversion.terms:BNStatisticsTerm", options=BNStatisticsOptions)
    register("input-stats", "purer_plugins.inversion.terms:InputStatisticsTerm", options=Options)
