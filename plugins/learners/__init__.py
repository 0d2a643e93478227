"""The built-in meta-learners: ``maml`` (Finn et al. 2017, the paper's Eq. 1),
``anil`` (Raghu et al. 2020), ``protonet`` (Snell et al. 2017), ``reptile``
(Nichol et al. 2018) and ``metasgd`` (Li et al. 2017). docs/learners.md
describes each one and its choices.

This module declares them with their options; the implementations are
imported when first used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from purer.api import Options, Workers, hookimpl


class _MAMLLoop(Options):
    """The inner and outer loops of MAML and the learners built on it."""

    inner_steps: int = Field(1, ge=0, description="gradient steps of the inner loop")
    inner_lr: float = Field(0.01, gt=0, description="inner-loop step size (alpha)")
    first_order: bool = Field(False, description="drop second-order terms of the outer gradient")
    outer_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the meta-model")
    test_inner_steps: int | None = Field(None, ge=0, description="inner steps at meta-test (default: inner_steps)")
    test_inner_lr: float | None = Field(None, gt=0, description="inner lr at meta-test (default: inner_lr)")


class _Execution(Options):
    """How the episodes of a meta step and the tasks of a meta-test run:
    shared by every learner of the family."""

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
    def _vmap_needs_own_batch_norm(self) -> _Execution:
        if self.batch_episodes == "vmap" and self.native_batch_norm:
            raise ValueError("batch_episodes='vmap' needs native_batch_norm=false: PyTorch's batch-norm "
                             "double backward under vmap gives wrong second-order gradients")
        return self


# The base order puts the loop's fields first, the execution fields after them.
class MAMLOptions(_Execution, _MAMLLoop):
    pass


class ANILOptions(MAMLOptions):
    """MAML's options; the inner loop moves the classifier head only, and
    its steps are cheap, so it takes more and larger ones by default."""

    inner_steps: int = Field(5, ge=0, description="gradient steps of the head in the inner loop")
    inner_lr: float = Field(0.1, gt=0, description="inner-loop step size of the head (alpha)")
    first_order: bool = Field(False, description="drop second-order terms of the outer gradient (the "
                                                 "body then learns from the query features only)")


class MetaSGDOptions(MAMLOptions):
    """MAML's options; the inner step sizes are learned, one per parameter entry."""

    inner_lr: float = Field(0.01, gt=0, description="initial value of every learned inner step size")
    test_inner_lr: float | None = Field(None, gt=0, description="not used: meta-test adapts with the "
                                                                "learned step sizes (must stay unset)")

    @model_validator(mode="after")
    def _rates_are_learned(self) -> MetaSGDOptions:
        if self.test_inner_lr is not None:
            raise ValueError("test_inner_lr does not apply to metasgd: meta-test adapts with the "
                             "learned per-parameter step sizes")
        return self


class ReptileOptions(MAMLOptions):
    """MAML's options, read the Reptile way: the inner loop is plain SGD and
    the outer update interpolates towards the adapted weights."""

    inner_steps: int = Field(5, ge=1, description="SGD steps of the inner loop (k)")
    inner_lr: float = Field(0.05, gt=0, description="inner SGD step size")
    first_order: bool = Field(False, description="the gradient switch's outer loss does not "
                                                 "differentiate through the inner steps (the reversed "
                                                 "loss then reaches the query images only); Reptile's "
                                                 "own update never needs second derivatives")
    outer_lr: float = Field(0.5, gt=0, description="interpolation rate (epsilon): each meta step moves "
                                                   "the meta-parameters this fraction of the way to the "
                                                   "episodes' mean adapted weights")
    inner_data: Literal["support", "episode"] = Field(
        "support", description="what the inner SGD steps train on: the support set, or the whole "
                               "episode (support and query; the logged train accuracy is then a fit)")


class _Prototypes(Options):
    metric: Literal["euclidean", "cosine"] = Field(
        "euclidean", description="logits: negative squared Euclidean distances to the prototypes, "
                                 "or cosine similarities times a learned scale")
    scale_init: float = Field(10.0, gt=0, description="initial value of the learned cosine scale")
    outer_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the meta-model")


class ProtoNetOptions(_Execution, _Prototypes):
    """No inner loop: the support set's class means in the embedding are the classifier."""

    native_batch_norm: bool = Field(False, description="BatchNorm through PyTorch's own module instead "
                                                       "of purer's batch-statistics kernel (comparison)")


@hookimpl
def register_meta_learners(register) -> None:
    register("maml", "purer_plugins.learners.maml:MAML", options=MAMLOptions)
    register("anil", "purer_plugins.learners.anil:ANIL", options=ANILOptions)
    register("metasgd", "purer_plugins.learners.metasgd:MetaSGD", options=MetaSGDOptions)
    register("reptile", "purer_plugins.learners.reptile:Reptile", options=ReptileOptions)
    register("protonet", "purer_plugins.learners.protonet:ProtoNet", options=ProtoNetOptions)
