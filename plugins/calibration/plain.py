"""``none``: standard meta-testing, the adapted model predicts the queries as is."""

from __future__ import annotations

from torch import Tensor

from purer.api import Calibrator, MetaLearner, Params


class NoCalibration(Calibrator):
    """The identity calibration: evaluation may take the learner's batched path."""

    passthrough = True

    def predict(self, learner: MetaLearner, params: Params, support: Tensor,
                support_labels: Tensor, query: Tensor) -> Tensor:
        return learner.predict(params, query)
