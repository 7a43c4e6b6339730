"""The command line: ``python -m segopt.cli {fit,validate,test,predict} --config ...``.

A LightningCLI whose data module states ``num_classes``, ``in_channels``, ``ignore_index``
and class names once; they are linked into the model.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from segopt.commands.moved_paths import keep_old_paths, old_paths_in
from segopt.core import checkpoints
from segopt.core.precision import resolve_precision
from segopt.lightning.datamodule import SegDataModule
from segopt.lightning.failsafe import (
    NonFiniteLossError,
    NonFiniteLossGuard,
    RunFolderGuard,
    is_out_of_memory,
    out_of_memory_message,
    user_message,
)
from segopt.lightning.module import SegModule

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

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if not add_subcommands:
            # Scripts (export, benchmarks) read the config a run saved, which records the
            # ``fit`` call's own arguments; they take the checkpoint as their own flag.
            self.parser.add_argument("--ckpt_path", type=str | None, default=None, help="not used here")
            self.parser.add_argument("--weights_only", type=bool | None, default=None, help="not used here")

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (jsonargparse types)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        self._checkpoint: dict[str, Any] | None = None
        if not subcommand:
            return
        # Resolved and read before LightningCLI reads the checkpoint's hyperparameters, so a
        # bad file is named here, and ``last``/``best`` are loaded like an explicit path.
        config = self.config[subcommand]
        self._logger_version = _logger_version(config)
        if subcommand == "fit" and config.model.get("init_weights"):
            config.model.init_weights = str(checkpoints.resolve_init_weights(config, TRAINER_DEFAULTS))
        path = checkpoints.resolve(config, subcommand, TRAINER_DEFAULTS)
        if path is not None:
            self._checkpoint = checkpoints.read_checkpoint(path)
            rank_zero_info(f"segopt: {'resuming' if subcommand == 'fit' else 'loading'} {path}")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_values(config, self.subcommand)
        if config.trainer.get("enable_progress_bar") is False:
            # The shared defaults list a progress bar, which Lightning refuses beside this flag.
            callbacks = config.trainer.get("callbacks") or []
            config.trainer.callbacks = [c for c in (callbacks if isinstance(callbacks, list) else [callbacks])
                                        if not _is_progress_bar(c)]
        requested = str(config.trainer.precision)
        ran, self._precision_note = resolve_precision(requested, _cuda_requested(config.trainer))
        if ran != requested:
            config.trainer.precision = ran
            self._precision_note = f" (requested {requested}; {self._precision_note})"
        if self.subcommand == "predict":
            _save_config_with_predictions(config.trainer)

    def after_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False: nothing will run, nothing to report
            return
        config = self.config[self.subcommand]
        # Said now, not in setup: by then the logger has made the run's folder.
        self.datamodule.check_batches(self.subcommand)
        if self._checkpoint is not None:
            data = self.datamodule
            checkpoints.check_classes(
                self._checkpoint, config.ckpt_path, data.num_classes, data.class_names, data.in_channels
            )
            checkpoints.check_network(self._checkpoint, config.ckpt_path, self.model.net, config.model.backbone, self.subcommand)
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveRunConfig) and self.subcommand == "fit" and config.get("ckpt_path"):
                callback.resumed = (str(config.ckpt_path), self._logger_version)
        device = type(self.trainer.accelerator).__name__.replace("Accelerator", "").lower()
        if self.subcommand == "fit" and config.trainer.sync_batchnorm and not isinstance(self.trainer.accelerator, CUDAAccelerator):
            # Said now: DDP would only raise "SyncBatchNorm layers only work with GPU modules" once fit started.
            sys.exit(
                f"error: trainer.sync_batchnorm is true but the run is on {device}; SyncBatchNorm needs CUDA GPUs. "
                "Add --trainer.sync_batchnorm false (each process then keeps its own BatchNorm statistics)."
            )
        rank_zero_info(f"segopt: running precision {self.trainer.precision} on {device}{self._precision_note}")

    def _run_subcommand(self, subcommand: str) -> None:
        # Private LightningCLI method, overridden because it is the one place that wraps a
        # subcommand's whole run (the public before_/after_ hooks miss a failure in between).
        # Any failure before the first checkpoint takes back what the run wrote (see RunFolderGuard).
        guard = RunFolderGuard(self._written_folders()) if self.trainer.is_global_zero else None
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if guard is not None:
                guard.restore()
            raise

    def _written_folders(self) -> list[Path]:
        folders = [Path(self.trainer.log_dir or self.trainer.default_root_dir)]
        folders += [Path(cb.output_dir) for cb in self.trainer.callbacks if getattr(cb, "output_dir", None)]
        return folders

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # LightningCLI parses, builds and runs the subcommand in its constructor. A failure of
        # the run reaches here after the Trainer has torn down; what is left is to say what
        # happened and what to change, without a traceback in the way.
        # Every parse starts from the shared Trainer defaults: per subcommand when running one,
        # for the single parser of run=False (scripts and the data check).
        keep_old_paths()  # configs, run configs and checkpoints written before the layered layout
        note_old_paths(sys.argv[1:] if kwargs.get("args") is None else kwargs["args"])
        subcommands = ("fit", "validate", "test", "predict")
        defaults = {"default_config_files": [TRAINER_DEFAULTS]}
        kwargs.setdefault("parser_kwargs", {s: defaults for s in subcommands} if kwargs.get("run", True) else defaults)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        try:
            super().__init__(*args, **kwargs)
        except NonFiniteLossError as error:
            raise SystemExit(f"error: {error}") from error
        except Exception as error:
            trainer, subcommand = getattr(self, "trainer", None), getattr(self, "subcommand", None)
            if trainer is None or subcommand is None or not is_out_of_memory(error):
                raise
            raise SystemExit("error: " + out_of_memory_message(error, trainer, subcommand)) from error


def _save_config_with_predictions(trainer_config) -> None:  # noqa: ANN001 (jsonargparse Namespace)
    """Point ``trainer.default_root_dir`` at a callback's ``output_dir`` (PredictionWriter's).

    LightningCLI saves the run's ``config.yaml`` there (with logging off, as in configs/predict.yaml),
    so the config that made a folder of masks lands in that folder, not in a shared one that every
    such run replaces.
    """
    callbacks = trainer_config.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        output_dir = (callback.get("init_args") or {}).get("output_dir") if hasattr(callback, "get") else None
        if output_dir is not None:
            trainer_config.default_root_dir = output_dir


class SaveRunConfig(SaveConfigCallback):
    """Saves the run's ``config.yaml`` (LightningCLI's callback), and the backbone's settings in each checkpoint.

    A resumed fit's ``config.yaml`` leaves the resume out (``ckpt_path`` and the logger version it
    picked), so the file still starts the run afresh; its first line says that it was resumed.
    The backbone's ``class_path``/``init_args`` go into every checkpoint under
    :data:`segopt.core.checkpoints.BACKBONE_KEY`, so a checkpoint says which network it holds.
    """

    #: ``(checkpoint path, logger version before the resume)`` when this fit resumes.
    resumed: tuple[str, Any] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001 (Lightning types)
        if self.resumed is None or self.already_saved:
            return super().setup(trainer, pl_module, stage)
        path, version = self.resumed
        resumed, self.config = self.config, self.config.clone()
        self.config.ckpt_path = None
        logger = self.config.trainer.get("logger")
        if hasattr(logger, "get") and hasattr(logger.get("init_args"), "get"):
            logger.init_args.version = version
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.config = resumed
        saved = Path(trainer.log_dir or "", self.config_filename)
        if trainer.is_global_zero and self.save_to_log_dir and saved.is_file():
            note = f"# Resumed from {path} (fit --ckpt_path); the resume is left out, so this file starts the run afresh.\n"
            saved.write_text(note + saved.read_text())

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:  # noqa: ANN001
        backbone = self.config.model.get("backbone")
        if hasattr(backbone, "as_dict"):
            checkpoint[checkpoints.BACKBONE_KEY] = backbone.as_dict()


def check_values(config, subcommand: str | None) -> None:  # noqa: ANN001 (jsonargparse Namespace)
    """Refuse, before anything is built or written, fit settings that would run but do nothing or go wrong."""
    if subcommand != "fit":
        return
    for key in ("max_epochs", "max_steps"):
        if config.trainer.get(key) == 0:
            sys.exit(
                f"error: trainer.{key} is 0, so fit would train nothing and leave an empty run; "
                f"set it to 1 or more (or -1 for no limit on {key.removeprefix('max_')})."
            )
    optimizer = config.model.get("optimizer") if hasattr(config.get("model"), "get") else None
    lr = optimizer.get("init_args", {}).get("lr") if hasattr(optimizer, "get") else None
    if isinstance(lr, (int, float)) and lr < 0:
        sys.exit(f"error: model.optimizer.init_args.lr is {lr}; a learning rate must be 0 or more, e.g. 3.0e-4.")


def note_old_paths(argv: Any) -> None:
    """Say, once per path, where a config (file or inline) names a class by its old module."""
    if not isinstance(argv, list):
        return
    found: dict[str, str] = {}
    for flag, value in zip(["", *argv], argv, strict=False):
        is_file = flag in ("--config", "-c") or value.startswith("--config=")
        path = Path(value.removeprefix("--config="))
        found.update(old_paths_in(path.read_text() if is_file and path.is_file() else value))
    for old, new in found.items():
        rank_zero_info(f"note: {old} is now {new}; the old path still loads, the new one is what configs should say")


def _is_progress_bar(callback) -> bool:  # noqa: ANN001 (jsonargparse Namespace or Callback)
    if isinstance(callback, ProgressBar):
        return True
    module, _, name = str(getattr(callback, "class_path", "")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def _logger_version(config) -> Any:  # noqa: ANN001 (jsonargparse Namespace)
    """The version the config gives its logger, before a resume points it at the resumed run's."""
    logger = config.trainer.get("logger")
    args = logger.get("init_args") if hasattr(logger, "get") else None
    return args.get("version") if hasattr(args, "get") else None


def _cuda_requested(trainer_config) -> bool:  # noqa: ANN001 (jsonargparse Namespace)
    """Whether the Trainer will run on CUDA GPUs (accelerator gpu/cuda, or auto with one present)."""
    accelerator = str(trainer_config.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def is_user_error(error: BaseException) -> bool:
    """A failure the user fixes (data, config, checkpoint, resume, memory): one message, no traceback."""
    return isinstance(error, (ValueError, FileNotFoundError, NonFiniteLossError)) or is_out_of_memory(error)


def main(args: list[str] | None = None) -> SegCLI:
    """Run the segopt command line (also installed as the ``segopt`` console script).

    A failure the user can fix ends as ``SystemExit("error: ...")``, one message without a
    traceback; ``SEGOPT_TRACEBACK=1`` in the environment raises it with its traceback.
    ``segopt plan|check|fetch|export ...`` run those commands (they are not Lightning subcommands).
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] and argv[0] in OTHER_COMMANDS:
        command = importlib.import_module(f"segopt.commands.{argv[0]}")
        raise SystemExit(command.main(argv[1:]))
    try:
        return SegCLI(
            SegModule,
            SegDataModule,
            subclass_mode_model=False,
            subclass_mode_data=False,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV) == "1" or not is_user_error(error):
            raise
        raise SystemExit(f"error: {user_message(error)}") from error


#: Commands of the ``segopt`` console script besides LightningCLI's subcommands.
OTHER_COMMANDS = ("plan", "check", "fetch", "export")

#: Set to 1 to see the traceback of a failure that is otherwise one message.
TRACEBACK_ENV = "SEGOPT_TRACEBACK"


if __name__ == "__main__":
    main()
