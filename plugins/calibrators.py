"""Calibrators applied at meta-test time, after the inner loop.

``none`` predicts the queries with the adapted parameters (standard
meta-testing); ``icfil`` is the paper's Alg. 2 (see ``icfil.py``).
"""

from __future__ import annotations

from purer_plugins.icfil import ICFIL
from torch import Tensor

import purer
from purer.interfaces import Calibrator, MetaLearner, Params


class NoCalibration(Calibrator):
    """Standard meta-testing: the adapted model predicts the queries as is."""

    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        return learner.predict(params, query)


@purer.hookimpl
def register_calibrators(register) -> None:
    register("none", NoCalibration)
    register("icfil", ICFIL)
