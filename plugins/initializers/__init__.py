"""The built-in initialisers of the meta-model, used to start ECI and as the
paper's baselines: ``random``, ``average`` and ``ota`` (optimal-transport
fusion, Singh & Jaggi 2020).

This module declares them with their options; the implementations are
imported when first used.
"""

from __future__ import annotations

from pydantic import Field

from purer.api import Options, hookimpl


class OTAOptions(Options):
    anchor: int = Field(0, ge=0, description="index of the teacher the others are aligned to")
    verify: bool = Field(True, description="check that alignment left each teacher's function unchanged")


@hookimpl
def register_initializers(register) -> None:
    register("random", "purer_plugins.initializers.average:RandomInit", options=Options)
    register("average", "purer_plugins.initializers.average:AverageInit", options=Options)
    register("ota", "purer_plugins.initializers.ota:OTAInit", options=OTAOptions)
