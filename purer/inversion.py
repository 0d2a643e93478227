"""The inversion loss every synthesis minimises: a weighted sum of registered terms.

The core builds one :class:`InversionLoss` per run from the ``[inversion]``
section (term name -> weight, plus each term's options) and hands it to the
inverter and to the calibrator. So a plugin that registers a new term, once
named in ``inversion.terms``, shapes the memory of every inverter during
meta-training and ICFIL's synthesis at meta-test time alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from purer.interfaces import InversionContext, InversionTerm
    from purer.types import Teacher


class InversionLoss:
    """``sum_k weight_k * term_k(ctx)`` over the configured terms (Eq. 2-4)."""

    def __init__(self, terms: Sequence[tuple[str, InversionTerm, float]]) -> None:
        self.terms = [(name, term, float(weight)) for name, term, weight in terms if weight > 0]
        if not self.terms:
            raise ValueError("inversion.terms: at least one term needs a weight > 0")

    @property
    def names(self) -> list[str]:
        """The terms' names, in the order of :meth:`__call__`'s values."""
        return [name for name, _, _ in self.terms]

    def __call__(self, ctx: InversionContext) -> tuple[Tensor, Tensor]:
        """The weighted loss, and each term's unweighted value (detached, one
        tensor in the order of :attr:`names`) for logging."""
        import torch

        values = [term(ctx) if term.applies_to(ctx.teacher)
                  else ctx.logits.new_zeros((), dtype=torch.float32) for _, term, _ in self.terms]
        loss = sum(weight * value for (_, _, weight), value in zip(self.terms, values))
        return loss, torch.stack([v.float() for v in values]).detach()

    def names_for(self, teacher: Teacher | None) -> list[str]:
        """The terms that apply to ``teacher`` (see ``InversionTerm.applies_to``)."""
        return [name for name, term, _ in self.terms if term.applies_to(teacher)]

    def term(self, name: str) -> InversionTerm:
        for own, term, _ in self.terms:
            if own == name:
                return term
        raise KeyError(name)
