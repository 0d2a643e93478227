"""An example third-party purer plugin: one module, one entry point.

It registers two small components:

* the curriculum ``every-k``: the gradient switch fires on every ``k``-th
  outer step, regardless of the meta-model's accuracy. A fixed schedule is
  the simplest baseline against the paper's loss-based switch
  (``gradient-switch``)::

      purer run --curriculum every-k --set curriculum.k=50

* the inversion term ``saturation``: a squared penalty on memory pixels
  outside the valid [0, 1] range once mapped back from the teacher's
  normalised space. Add it to the run's inversion loss by giving it a
  weight, and every inverter's memory is shaped by it::

      purer run --set 'inversion.terms={ce=1, tv=1e-4, l2=1e-5, bn=0.01, saturation=0.1}'

  ICFIL synthesises with the same terms, but from the adapted meta-model:
  there is no teacher then (``ctx.teacher is None``), hence no input space
  to un-normalise with, and the term contributes zero.

Installed with ``pip install examples/purer-example-plugin``, it appears in
``purer plugins`` as ``example``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from purer.api import Curriculum, InversionContext, InversionTerm, Options, hookimpl


class EveryKOptions(Options):
    k: int = Field(100, ge=1, description="fire the switch on every k-th outer step")
    scale: float = Field(10.0, ge=0, description="lambda: weight of the reversed outer loss")


class EveryK(Curriculum):
    """Fires on steps k, 2k, 3k, ...; ignores the accuracy feedback."""

    Options = EveryKOptions

    def adversarial_scale(self, step: int) -> float:
        return self.options.scale if step > 0 and step % self.options.k == 0 else 0.0

    def observe(self, step: int, accuracy: float) -> None:
        return None


class SaturationOptions(Options):
    margin: float = Field(0.0, ge=0, description="tolerated overshoot beyond [0, 1], in pixel units")


class Saturation(InversionTerm):
    """Mean squared distance of each pixel value to [-margin, 1 + margin]."""

    Options = SaturationOptions

    def __call__(self, ctx: InversionContext) -> Tensor:
        if ctx.teacher is None:  # ICFIL's synthesis: no teacher, no input space to map back to
            return ctx.images.new_zeros((), dtype=torch.float32)
        pixels = ctx.teacher.space.denormalize(ctx.images.float())
        low = torch.relu(-self.options.margin - pixels)
        high = torch.relu(pixels - 1.0 - self.options.margin)
        return (low.square() + high.square()).mean()


@hookimpl
def register_curricula(register) -> None:
    register("every-k", EveryK)


@hookimpl
def register_inversion_terms(register) -> None:
    register("saturation", Saturation)
