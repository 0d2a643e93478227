"""purer's public plugin API: everything a plugin may import from purer.

A plugin (built-in or third-party) imports from this module and nothing else
of purer's; ``tests/plugins/test_boundary.py`` fails if a module under
``plugins/`` does otherwise. What is not named here is internal and may
change without notice.

The names fall into groups:

* **the contract**: :data:`hookimpl`, the component interfaces
  (:class:`Inverter`, :class:`InversionTerm`, :class:`Curriculum`,
  :class:`MetaLearner`, :class:`Calibrator`, :class:`Initializer`,
  :class:`DatasetReader`) with :class:`Options`, and the errors a component
  raises for the user to read;
* **data types** the interfaces speak: :class:`Teacher`, :class:`InputSpace`,
  :class:`ClassBank`, :class:`EpisodeBatch`, :class:`SplitData`,
  :class:`OuterMetrics`, :class:`InversionContext`, :class:`InversionLoss`;
* **kernels**: differentiable building blocks with fast CPU backwards
  (inversion priors, batch moments, batch-statistics BatchNorm, teacher
  views, the supervised-contrastive loss);
* **execution helpers**: worker threads, optimiser state under CUDA graphs,
  progress bars;
* **models**: timm model creation and the head/backbone split;
* **dataset-reader helpers**: checked decoding, packing and caching.

The contract is importable without torch, so a plugin's registration module
can stay cheap; the other names load their modules on first use.

A complete plugin::

    from purer.api import Curriculum, hookimpl

    class Never(Curriculum):
        def adversarial_scale(self, step): return 0.0
        def observe(self, step, accuracy): pass

    @hookimpl
    def register_curricula(register):
        register("never", Never)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from purer.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    PluginError,
    PurerError,
    SplitMissing,
    ZooError,
)
from purer.hookspecs import Register, hookimpl
from purer.interfaces import (
    Calibrator,
    Component,
    Curriculum,
    DatasetOptions,
    DatasetReader,
    Initializer,
    InversionContext,
    InversionTerm,
    Inverter,
    MetaLearner,
    Options,
    Params,
    Workers,
)
from purer.inversion import InversionLoss

# Names whose modules import torch (or timm): loaded on first access.
_LAZY: dict[str, str] = {
    # data types
    "InputSpace": "purer.types",
    "SplitData": "purer.types",
    "EpisodeBatch": "purer.types",
    "Teacher": "purer.types",
    "ClassBank": "purer.types",
    "OuterMetrics": "purer.types",
    "find_bn_layers": "purer.types",
    # kernels
    "total_variation": "purer.kernels.losses",
    "l2_prior": "purer.kernels.losses",
    "bn_statistics": "purer.kernels.losses",
    "batch_moments": "purer.kernels.losses",
    "moments_and_max_pool": "purer.kernels.losses",
    "per_channel": "purer.kernels.losses",
    "supcon_loss": "purer.kernels.supcon",
    "use_batch_stats_norm": "purer.kernels.batch_norm",
    "norm_relu_maxpool": "purer.kernels.batch_norm",
    "has_module_hooks": "purer.kernels.batch_norm",
    "teacher_view": "purer.kernels.teacher_view",
    "worker_views": "purer.kernels.teacher_view",
    "FoldedTeacher": "purer.kernels.teacher_view",
    "make_capturable": "purer.kernels.optim",
    "load_optimizer_state": "purer.kernels.optim",
    # execution helpers
    "WorkerPool": "purer.parallel",
    "resolve_workers": "purer.parallel",
    "copy_sharing_tensors": "purer.parallel",
    "warn_if_slow_bf16": "purer.runtime",
    "progress": "purer.progress",
    # models
    "create_model": "purer.models",
    "head_parameter_names": "purer.models",
    "head_state_keys": "purer.models",
    "pre_logits": "purer.models",
    "input_space_of": "purer.models",
    "architecture_of": "purer.models",
    # dataset-reader helpers
    "check_split": "purer.data.readers",
    "resolve_root": "purer.data.readers",
    "file_signature": "purer.data.readers",
    "files_digest": "purer.data.readers",
    "to_nchw": "purer.data.readers",
    "make_split": "purer.data.readers",
    "share": "purer.data.readers",
    "load_npz": "purer.data.readers",
    "decode_image": "purer.data.readers",
    "decode_many": "purer.data.readers",
    "scan_image_folder": "purer.data.readers",
    "load_plain_pickle": "purer.data.readers",
    "cached_array": "purer.data.readers",
    "ClassIndex": "purer.data.readers",
    "cache_dir": "purer.cache",
}

__all__ = [
    # the contract
    "hookimpl", "Register", "Options", "Component", "Inverter", "InversionTerm", "InversionContext",
    "InversionLoss", "Curriculum", "MetaLearner", "Calibrator", "Initializer", "DatasetReader",
    "DatasetOptions", "Params", "Workers",
    "PurerError", "PluginError", "ConfigError", "DataError", "SplitMissing", "ZooError",
    "DivergenceError", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'purer.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    pass
