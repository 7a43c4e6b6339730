"""The Lightning layer: the module, the datamodule and the callbacks that drive a fit.

It builds on the plain-PyTorch parts (``segopt.models``, ``segopt.losses``, ``segopt.data``,
``segopt.core``) and never imports an entry point (``segopt.commands``). Configs name its
classes by this package, e.g. ``segopt.lightning.TimeBudget``.
"""

from segopt.lightning.callbacks import (
    AtomicCheckpointIO,
    ConfusionMatrixFigure,
    EncoderFreeze,
    HParamsBestMetric,
    PurgeStaleEvents,
    ValidationOverlays,
)
from segopt.lightning.datamodule import SegDataModule
from segopt.lightning.failsafe import NonFiniteLossGuard, ScheduleAwareBatchSizeFinder
from segopt.lightning.module import SegModule
from segopt.lightning.prediction_writer import PredictionWriter
from segopt.lightning.time_budget import TimeBudget

__all__ = [
    "AtomicCheckpointIO",
    "ConfusionMatrixFigure",
    "EncoderFreeze",
    "HParamsBestMetric",
    "NonFiniteLossGuard",
    "PredictionWriter",
    "PurgeStaleEvents",
    "ScheduleAwareBatchSizeFinder",
    "SegDataModule",
    "SegModule",
    "TimeBudget",
    "ValidationOverlays",
]
