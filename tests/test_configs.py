"""The shipped recipes: amp.yaml and fp32.yaml must not drift apart."""

from __future__ import annotations

import yaml

from tests.conftest import CONFIGS


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        out = {}
        for i, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): tree}


def test_fp32_differs_from_amp_only_in_precision_and_run_name() -> None:
    amp = _flatten(yaml.safe_load((CONFIGS / "amp.yaml").read_text()))
    fp32 = _flatten(yaml.safe_load((CONFIGS / "fp32.yaml").read_text()))
    differing = {k for k in amp.keys() | fp32.keys() if amp.get(k) != fp32.get(k)}
    assert differing == {"trainer.precision", "trainer.logger.init_args.name"}
    assert (amp["trainer.precision"], fp32["trainer.precision"]) == ("16-mixed", "32-true")


def test_amp_is_the_seeds_recipe() -> None:
    amp = _flatten(yaml.safe_load((CONFIGS / "amp.yaml").read_text()))
    assert amp["model.optimizer.class_path"] == "torch.optim.AdamW"
    assert amp["model.scheduler.class_path"] == "segopt.schedules.OneCycle"
    assert amp["model.scheduler.init_args.max_lr"] == 3e-4
    assert amp["data.batch_size"] == 16
    assert (amp["model.loss.init_args.ce"], amp["model.loss.init_args.dice"]) == (0.5, 0.5)
    assert amp["data.source.class_path"] == "segopt.data.SyntheticShapes"
