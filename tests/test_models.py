"""Backbones: shapes for odd sizes and grey input, deep supervision, weights, gradients, fine-tuning."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torch import nn

from segopt.commands.cli import main
from segopt.core.schedules import OneCycle
from segopt.data import SyntheticShapes
from segopt.lightning import SegDataModule
from segopt.lightning.callbacks import EncoderFreeze
from segopt.lightning.module import SegModule
from segopt.models import FinetunableEncoder, NestedUNet, ResNetUNet, SMPBackbone, UNet
from segopt.models.resnet_unet import adapt_first_conv, resolve_weights
from tests.conftest import CONFIGS, quiet_trainer

TINY_DECODER = (16, 8, 8, 4, 4)

# Tiny widths keep every case well under a second on a CPU.
BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    "unet": partial(UNet, base_channels=4, depth=3),
    "res_unet_transpose": partial(UNet, base_channels=4, depth=3, residual=True, up_mode="transpose"),
    "nested_unet": partial(NestedUNet, base_channels=4, depth=3),
    "nested_unet_ds": partial(NestedUNet, base_channels=4, depth=3, deep_supervision=True, residual=True),
    "resnet18_unet": partial(ResNetUNet, encoder="resnet18", decoder_channels=TINY_DECODER),
    "resnet50_unet_bilinear": partial(ResNetUNet, encoder="resnet50", decoder_channels=TINY_DECODER, decoder_interpolation="bilinear"),
    "smp_unet": partial(SMPBackbone, encoder_name="resnet18", decoder_channels=TINY_DECODER),
    "smp_fpn": partial(SMPBackbone, arch="FPN", encoder_name="resnet18", decoder_pyramid_channels=32, decoder_segmentation_channels=32),
}



def _build(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name.startswith("smp"):
        pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    return BACKBONES[name](in_channels, num_classes)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_odd_sized_input_gives_logits_of_the_same_size(name: str, in_channels: int) -> None:
    module = SegModule(backbone=partial(_build, name), num_classes=3, in_channels=in_channels).eval()
    with torch.no_grad():
        out = module(torch.randn(2, in_channels, 67, 45))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 67, 45)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_module_pads_once_to_the_backbone_size_multiple_and_crops_back(name: str) -> None:
    module = SegModule(backbone=partial(_build, name), num_classes=3, in_channels=3).eval()
    expected_multiple = 32 if name.startswith(("resnet", "smp")) else 2**3  # encoders of stride 32; depth-3 UNets
    assert module.size_multiple == module.net.size_multiple == expected_multiple
    x = torch.randn(1, 3, 67, 45)
    m = expected_multiple
    padded = torch.nn.functional.pad(x, (0, (-45) % m, 0, (-67) % m), mode="replicate")
    with torch.no_grad():
        assert torch.equal(module(x), module.net(padded)[..., :67, :45])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    net = _build(name, 1, num_classes=2).train()
    out = net(torch.randn(2, 1, 64, 32))
    outs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outs).backward()
    without = [n for n, p in net.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert without == []


@pytest.mark.parametrize("name", list(BACKBONES))
def test_channels_last_module_gives_the_same_logits(name: str) -> None:
    plain = SegModule(backbone=partial(_build, name), num_classes=3, in_channels=3).eval()
    fast = SegModule(backbone=partial(_build, name), num_classes=3, in_channels=3, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    convs = [m.weight for m in fast.net.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)


def test_deep_supervision_returns_one_logit_map_per_depth_in_training_and_the_last_in_eval() -> None:
    torch.manual_seed(0)
    net = NestedUNet(3, 4, base_channels=4, depth=3, deep_supervision=True)
    x = torch.randn(2, 3, 32, 24)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 3
    assert [tuple(o.shape) for o in outs] == [(2, 4, 32, 24)] * 3
    net.eval()
    with torch.no_grad():
        single = net(x)
        # Same eval-mode layers, but the top module asks for every head: the eval output is the last one.
        net.training = True
        heads = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 4, 32, 24)
    assert torch.equal(heads[-1], single)
    assert not torch.equal(heads[0], single)


def test_module_crops_every_deep_supervision_head_back_to_the_input_size() -> None:
    module = SegModule(backbone=partial(NestedUNet, base_channels=4, depth=3, deep_supervision=True), num_classes=4).train()
    outs = module._backbone(torch.randn(2, 3, 33, 29))
    assert [tuple(o.shape) for o in outs] == [(2, 4, 33, 29)] * 3


def test_without_deep_supervision_nested_unet_has_one_head_and_returns_a_tensor_in_training() -> None:
    net = NestedUNet(3, 4, base_channels=4, depth=2).train()
    assert len(net.heads) == 1
    assert isinstance(net(torch.randn(2, 3, 16, 16)), torch.Tensor)


def test_deep_supervision_loss_is_the_weighted_sum_over_heads() -> None:
    module = SegModule(
        backbone=partial(NestedUNet, base_channels=4, depth=2, deep_supervision=True),
        num_classes=3,
        aux_weights=[0.25, 0.75],
    ).train()
    torch.manual_seed(1)
    x, mask = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    outs = module.net(x)
    expected = 0.25 * module.criterion(outs[0], mask) + 0.75 * module.criterion(outs[1], mask)
    torch.testing.assert_close(module._loss(outs, mask), expected)


def test_local_weights_file_round_trip_gives_the_same_encoder_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    source = ResNetUNet(3, 2, encoder="resnet18", decoder_channels=TINY_DECODER).eval()
    path = tmp_path / "resnet18_encoder.pth"
    torch.save(source.encoder.state_dict(), path)

    torch.manual_seed(1)
    loaded = ResNetUNet(3, 2, encoder="resnet18", weights=str(path), decoder_channels=TINY_DECODER).eval()
    torch.manual_seed(1)
    scratch = ResNetUNet(3, 2, encoder="resnet18", decoder_channels=TINY_DECODER).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(loaded.encode(x), source.encode(x)):
            assert torch.equal(got, want)
        assert not torch.equal(scratch.encode(x)[-1], source.encode(x)[-1])
        # Same seed for the decoder, so the whole network matches once the encoder does.
        loaded.decoder.load_state_dict(source.decoder.state_dict())
        loaded.head.load_state_dict(source.head.state_dict())
        assert torch.equal(loaded(x), source(x))


def test_torchvision_state_dict_with_classifier_loads_and_grey_input_sums_rgb_filters(tmp_path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)  # has fc.* keys, which the encoder ignores
    grey = ResNetUNet(1, 2, encoder="resnet18", weights=str(path), decoder_channels=TINY_DECODER)
    assert grey.encoder.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(grey.encoder.conv1.weight, resnet.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(grey.encoder.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_adapt_first_conv_sums_for_grey_and_repeats_scaled_for_four_channels() -> None:
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)  # [[0,1,2],[3,4,5]]
    assert adapt_first_conv(w, 1).flatten().tolist() == [3.0, 12.0]
    assert adapt_first_conv(w, 4).flatten().tolist() == [0.0, 0.75, 1.5, 0.0, 2.25, 3.0, 3.75, 2.25]
    assert adapt_first_conv(w, 3) is w
    with pytest.raises(ValueError, match="only 3 \\(RGB\\) filters"):
        adapt_first_conv(torch.zeros(2, 2, 1, 1), 1)


def test_missing_weights_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "nowhere" / "resnet34.pth"
    with pytest.raises(FileNotFoundError, match=f"encoder weights file {path} does not exist"):
        ResNetUNet(3, 2, encoder="resnet34", weights=str(path))


def test_weights_file_of_another_resnet_is_refused_with_the_file_and_encoder(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=f"encoder weights file {path} does not match encoder resnet50"):
        ResNetUNet(3, 2, encoder="resnet50", weights=str(path))


def test_weights_file_with_unrelated_keys_lists_missing_and_unexpected_keys(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "backbone.foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"missing keys \['bn1.weight'.*unexpected keys \['backbone.foo'\]"):
        ResNetUNet(3, 2, encoder="resnet18", weights=str(path))


def test_lightning_checkpoint_given_as_weights_is_refused(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"net.head.weight": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match=f"{path} looks like a Lightning checkpoint"):
        ResNetUNet(3, 2, encoder="resnet18", weights=str(path))


def test_torchvision_weight_names_resolve_without_download() -> None:
    w = torchvision.models.ResNet34_Weights
    assert resolve_weights("resnet34", "ResNet34_Weights.IMAGENET1K_V1") is w.IMAGENET1K_V1
    assert resolve_weights("resnet34", "IMAGENET1K_V1") is w.IMAGENET1K_V1
    assert resolve_weights("resnet34", "DEFAULT") is w.IMAGENET1K_V1
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V2") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    with pytest.raises(ValueError, match="for resnet34; use None, one of ResNet34_Weights.IMAGENET1K_V1"):
        resolve_weights("resnet34", "ResNet18_Weights.IMAGENET1K_V1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "resnet101"}, "encoder='resnet101' is not supported; use one of resnet18, resnet34, resnet50"),
        ({"decoder_channels": (64, 32)}, "decoder_channels has 2 widths"),
        ({"decoder_interpolation": "bicubic"}, "decoder_interpolation='bicubic' is not one of nearest, bilinear"),
        ({"freeze_encoder_epochs": -1}, "freeze_encoder_epochs=-1 is negative"),
        ({"encoder_lr_scale": 0.0}, "encoder_lr_scale=0.0 must be > 0"),
    ],
)
def test_bad_resnet_unet_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        ResNetUNet(3, 2, **{"encoder": "resnet18", **kwargs})


def test_encoder_lr_scale_lowers_the_encoder_rate_through_the_whole_one_cycle() -> None:
    module = SegModule(
        backbone=partial(ResNetUNet, encoder="resnet18", decoder_channels=TINY_DECODER, encoder_lr_scale=0.1),
        num_classes=2,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
    )
    optimizer = module.configure_optimizers()
    decoder, encoder = optimizer.param_groups
    assert [decoder["name"], encoder["name"]] == ["decoder", "encoder"]
    assert {id(p) for p in encoder["params"]} == {id(p) for p in module.net.encoder.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(module.parameters()))
    assert (decoder["lr"], encoder["lr"]) == pytest.approx((1e-3, 1e-4))
    schedule = OneCycle(optimizer, total_steps=10, max_lr=1e-3)
    for _ in range(9):
        assert encoder["lr"] == pytest.approx(0.1 * decoder["lr"])
        optimizer.step()
        schedule.step()


def test_backbone_asks_for_the_freeze_callback_only_when_freezing() -> None:
    frozen = SegModule(backbone=partial(ResNetUNet, encoder="resnet18", freeze_encoder_epochs=2), num_classes=2)
    (callback,) = frozen.configure_callbacks()
    assert isinstance(callback, EncoderFreeze) and frozen.net.freeze_encoder_epochs == 2
    assert SegModule(backbone=partial(ResNetUNet, encoder="resnet18"), num_classes=2).configure_callbacks() == []
    assert SegModule(backbone=partial(UNet, base_channels=4), num_classes=2).configure_callbacks() == []


class _Snapshots(pl.Callback):
    """Copies of the encoder's and decoder's full state (weights and BN statistics) after each epoch."""

    def __init__(self) -> None:
        self.encoder: list[dict[str, torch.Tensor]] = []
        self.decoder: list[dict[str, torch.Tensor]] = []
        self.trainable: list[tuple[bool, bool]] = []

    def _copy(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: SegModule) -> None:
        self.encoder.append(self._copy(pl_module.net.encoder))
        self.decoder.append(self._copy(pl_module.net.decoder))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: SegModule) -> None:
        self.on_train_start(trainer, pl_module)
        encoder = pl_module.net.encoder
        self.trainable.append((all(p.requires_grad for p in encoder.parameters()), encoder.training))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_encoder_stays_frozen_for_the_first_epochs_then_trains(tmp_path) -> None:
    torch.manual_seed(0)
    module = SegModule(
        backbone=partial(ResNetUNet, encoder="resnet18", decoder_channels=TINY_DECODER, freeze_encoder_epochs=1),
        num_classes=5,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        scheduler=None,
    )
    data = SegDataModule(SyntheticShapes(size=32, num_train=4, num_val=2), batch_size=2, num_workers=0)
    snaps = _Snapshots()
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[snaps], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    start, after_frozen, after_unfrozen = snaps.encoder
    assert snaps.trainable == [(False, False), (True, True)]  # (requires_grad, BN in train mode)
    assert _same(after_frozen, start)  # weights and BN running statistics untouched
    assert not _same(after_unfrozen, after_frozen)
    assert not torch.equal(after_unfrozen["bn1.running_mean"], after_frozen["bn1.running_mean"])
    assert not _same(snaps.decoder[1], snaps.decoder[0])  # the decoder trained meanwhile


def test_smp_backbone_without_the_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ImportError, match=r'pip install "segopt\[smp\]"'):
        SMPBackbone(3, 2)


def test_smp_backbone_refuses_unknown_arch_and_aux_params() -> None:
    pytest.importorskip("segmentation_models_pytorch")
    with pytest.raises(ValueError, match="arch='UNetX' is not an smp architecture; use one of Unet, UnetPlusPlus"):
        SMPBackbone(3, 2, arch="UNetX")
    with pytest.raises(ValueError, match="does not take aux_params"):
        SMPBackbone(3, 2, aux_params={"classes": 2})


def test_smp_backbone_exposes_its_encoder_for_fine_tuning() -> None:
    pytest.importorskip("segmentation_models_pytorch")
    net = SMPBackbone(3, 2, encoder_name="resnet18", decoder_channels=TINY_DECODER, encoder_lr_scale=0.5, freeze_encoder_epochs=1)
    decoder, encoder = net.param_groups()
    assert encoder["lr_scale"] == 0.5 and {id(p) for p in encoder["params"]} == {id(p) for p in net.model.encoder.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(net.parameters()))
    assert isinstance(net, FinetunableEncoder) and net.encoder is net.model.encoder and net.freeze_encoder_epochs == 1


@pytest.mark.parametrize("training", [True, False])
def test_freeze_encoder_stops_gradients_and_bn_updates_and_unfreeze_restores_the_mode(training: bool) -> None:
    net = ResNetUNet(3, 2, encoder="resnet18", decoder_channels=TINY_DECODER)
    net.train()
    net.freeze_encoder()
    assert not any(p.requires_grad for p in net.encoder.parameters()) and not net.encoder.training
    assert all(p.requires_grad for p in net.decoder.parameters()) and net.decoder.training
    net.unfreeze_encoder(training)
    assert all(p.requires_grad for p in net.encoder.parameters()) and net.encoder.training is training


MODEL_CONFIGS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPECTED_CLASSES = {
    "unet": "segopt.models.UNet",
    "res_unet": "segopt.models.UNet",
    "nested_unet": "segopt.models.NestedUNet",
    "resnet34_unet": "segopt.models.ResNetUNet",
    "smp_unet": "segopt.models.SMPBackbone",
}


def test_every_backbone_has_a_config() -> None:
    assert MODEL_CONFIGS == sorted(EXPECTED_CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_trains_one_step_with_amp_config(name: str, tmp_path, monkeypatch) -> None:
    if name.startswith("smp"):
        pytest.importorskip("segmentation_models_pytorch")
    monkeypatch.chdir(tmp_path)  # anything the run writes stays in tmp_path
    cli = main(
        [
            "fit",
            f"--config={CONFIGS / 'amp.yaml'}",
            f"--config={CONFIGS / 'model' / f'{name}.yaml'}",
            "--trainer.fast_dev_run=true",
            "--trainer.enable_model_summary=false",
            "--data.source.init_args.size=32",
            "--data.source.init_args.num_train=2",
            "--data.source.init_args.num_val=2",
            "--data.batch_size=2",
            "--data.num_workers=0",
        ]
    )
    assert f"{type(cli.model.net).__module__.rsplit('.', 1)[0]}.{type(cli.model.net).__name__}" == EXPECTED_CLASSES[name]
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
