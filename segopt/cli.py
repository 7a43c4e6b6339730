"""The command line: ``python -m segopt.cli {fit,validate,test,predict} --config ...``.

A LightningCLI whose data module states ``num_classes``, ``in_channels``, ``ignore_index``
and class names once; they are linked into the model.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from segopt.data.datamodule import SegDataModule
from segopt.failsafe import NonFiniteLossError, NonFiniteLossGuard, is_out_of_memory, out_of_memory_message
from segopt.module import SegModule
from segopt.precision import resolve_precision

# Trainer, logger, checkpoint and callback defaults every recipe shares; any --config overrides them.
TRAINER_DEFAULTS = Path(__file__).with_name("trainer_defaults.yaml")

# segopt prints its own single line about the precision that actually ran (see below).
warnings.filterwarnings("ignore", message=r".*AMP with fp16 is not supported on CPU.*")


class SegCLI(LightningCLI):
    """LightningCLI with the data→model links and resume-by-``last`` for segopt."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse type)
        for key in ("num_classes", "in_channels", "ignore_index", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # Always on, configured under its own key (nonfinite_loss.patience).
        parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite_loss")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        requested = str(config.trainer.precision)
        ran, self._precision_note = resolve_precision(requested, _cuda_requested(config.trainer))
        if ran != requested:
            config.trainer.precision = ran
            self._precision_note = f" (requested {requested}; {self._precision_note})"
        if self.subcommand == "fit":
            _resolve_last_checkpoint(config)

    def after_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False: nothing will run, nothing to report
            return
        config = self.config[self.subcommand]
        device = type(self.trainer.accelerator).__name__.replace("Accelerator", "").lower()
        if self.subcommand == "fit" and config.trainer.sync_batchnorm and not isinstance(self.trainer.accelerator, CUDAAccelerator):
            # Said now: DDP would only raise "SyncBatchNorm layers only work with GPU modules" once fit started.
            sys.exit(
                f"error: trainer.sync_batchnorm is true but the run is on {device}; SyncBatchNorm needs CUDA GPUs. "
                "Add --trainer.sync_batchnorm false (each process then keeps its own BatchNorm statistics)."
            )
        rank_zero_info(f"segopt: running precision {self.trainer.precision} on {device}{self._precision_note}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # LightningCLI parses, builds and runs the subcommand in its constructor. A failure of
        # the run reaches here after the Trainer has torn down; what is left is to say what
        # happened and what to change, without a traceback in the way.
        # Every parse starts from the shared Trainer defaults: per subcommand when running one,
        # for the single parser of run=False (scripts and the data check).
        subcommands = ("fit", "validate", "test", "predict")
        defaults = {"default_config_files": [TRAINER_DEFAULTS]}
        kwargs.setdefault("parser_kwargs", {s: defaults for s in subcommands} if kwargs.get("run", True) else defaults)
        try:
            super().__init__(*args, **kwargs)
        except NonFiniteLossError as error:
            raise SystemExit(f"error: {error}") from error
        except Exception as error:
            trainer, subcommand = getattr(self, "trainer", None), getattr(self, "subcommand", None)
            if trainer is None or subcommand is None or not is_out_of_memory(error):
                raise
            raise SystemExit("error: " + out_of_memory_message(error, trainer, subcommand)) from error


def _cuda_requested(trainer_config) -> bool:  # noqa: ANN001 (jsonargparse Namespace)
    """Whether the Trainer will run on CUDA GPUs (accelerator gpu/cuda, or auto with one present)."""
    accelerator = str(trainer_config.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _resolve_last_checkpoint(config) -> None:  # noqa: ANN001 (jsonargparse Namespace)
    """Turn ``--ckpt_path last`` into the newest ``last.ckpt`` of this experiment's runs.

    Each fresh fit gets a new TensorBoard version directory; resuming points the logger
    back at the version that wrote the checkpoint, so the curves continue in one run.
    """
    if config.get("ckpt_path") != "last":
        return
    logger = config.trainer.get("logger")
    if not (isinstance(logger, dict) or hasattr(logger, "class_path")):
        return
    if not str(logger.class_path).endswith("TensorBoardLogger"):
        return
    args = logger.init_args
    root = Path(args.save_dir) / (args.get("name") or "lightning_logs")
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        sys.exit(
            f"error: --ckpt_path last found no checkpoints/last.ckpt under {root}/. "
            "Train without --ckpt_path first, or pass the path of a .ckpt file."
        )
    last = candidates[-1]
    args.version = last.parent.parent.name
    config.ckpt_path = str(last)
    rank_zero_info(f"segopt: resuming {last}")


def main(args: list[str] | None = None) -> SegCLI:
    """Run the segopt command line (also installed as the ``segopt`` console script)."""
    return SegCLI(
        SegModule,
        SegDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
