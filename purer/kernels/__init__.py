"""Differentiable building blocks shared by the engine and the plugins.

* :mod:`~purer.kernels.losses`: the inversion priors (Eq. 3-4) and the
  per-channel batch moments they need, with one-pass CPU backwards;
* :mod:`~purer.kernels.batch_norm`: batch-statistics BatchNorm whose second
  derivative is cheap (MAML differentiates it twice);
* :mod:`~purer.kernels.teacher_view`: a teacher's logits plus its BN-input
  moments, from hooks or from a folded, traced copy;
* :mod:`~purer.kernels.supcon`: ICFIL's supervised-contrastive loss (Eq. 7);
* :mod:`~purer.kernels.optim`: optimiser state that survives CUDA-graph capture.

Plugins reach these through :mod:`purer.api`.
"""
