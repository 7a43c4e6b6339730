"""Loaders (seeding, workers, cache) and the data check a user runs before training."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from segopt.commands.check import main as check_main
from segopt.data import CachedSamples, PairedFolder, SyntheticShapes, TransformedDataset
from segopt.data.files import DataError
from segopt.data.transforms import Augment, Normalize, eval_transform, train_transform
from segopt.lightning import SegDataModule
from segopt.lightning.datamodule import _worker_init, default_num_workers


def _batches(seed: int, num_workers: int = 2, epochs: int = 2) -> list[dict]:
    torch.manual_seed(seed)
    dm = SegDataModule(
        SyntheticShapes(size=40, num_train=8, num_val=2),
        batch_size=4,
        num_workers=num_workers,
        train_size=(32, 32),
        resize_mode="crop",
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    return [batch for _ in range(epochs) for batch in loader]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) and torch.equal(x["index"], y["index"])
        for x, y in zip(a, b, strict=True)
    )


def test_same_seed_same_augmented_batches_with_two_workers():
    first, again, other = _batches(0), _batches(0), _batches(1)
    assert len(first) == 4  # 2 epochs x 2 batches
    assert _same(first, again)
    assert not _same(first, other)


def test_same_seed_same_batches_in_the_main_process():
    assert _same(_batches(5, num_workers=0, epochs=1), _batches(5, num_workers=0, epochs=1))


class _Repeat(Dataset):
    """The same sample n times: any difference between items comes from the augmentation."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sample = SyntheticShapes(size=32).split("train", 255)[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.sample


def test_each_worker_draws_its_own_augmentations():
    torch.manual_seed(0)
    dataset = TransformedDataset(_Repeat(4), train_transform(Augment(), 255, seed=0))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=_worker_init)
    items = [b["image"] for b in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert not torch.equal(items[0], items[1])  # workers would repeat each other with one shared seed
    assert not torch.equal(items[0], items[2])


class _Threads(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


def test_opencv_runs_single_threaded_inside_workers():
    loader = DataLoader(_Threads(), batch_size=None, num_workers=1, worker_init_fn=_worker_init)
    assert list(loader) == [1]


class _BadMask(Dataset):
    """One decoded pair whose mask holds 7, which is neither a class of 3 nor ignore_index."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((4, 4, 3), np.uint8), np.array([[0, 1, 7, 255]] * 4, np.uint8)


def test_mask_value_outside_the_classes_stops_loading_naming_the_value():
    dataset = TransformedDataset(_BadMask(), eval_transform(None, Normalize(), 3), check_mask=(3, 255))
    with pytest.raises(DataError, match=r"^bad data: sample 0: after the transform the mask holds \[7\], which are "
                       r"neither class ids \(0\.\.2\) nor ignore_index \(255\); check the data's num_classes"):
        dataset[0]


def test_every_split_of_the_datamodule_checks_its_masks():
    dm = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), num_workers=0)
    assert dm.dataset("train").check_mask == dm.dataset("val").check_mask == (5, 255)  # 5 shape classes


def test_loader_settings():
    dm = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), batch_size=2, num_workers=2)
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (2, True, False)
    assert loader.worker_init_fn is _worker_init
    dm = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), num_workers=0, pin_memory=True)
    assert dm.val_dataloader().pin_memory is True and dm.val_dataloader().persistent_workers is False


def _write_pairs(root: Path, split: str, count: int, size: tuple[int, int] = (24, 32)) -> None:
    rng = np.random.default_rng(len(split))
    for i in range(count):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")


def test_cache_gives_the_same_samples_as_decoding(tmp_path: Path):
    _write_pairs(tmp_path, "train", 3)
    _write_pairs(tmp_path, "val", 1)
    source = PairedFolder(str(tmp_path), ["a", "b", "c"])
    decoded = source.split("train", 255)
    cached = CachedSamples(decoded)
    for i in range(3):
        np.testing.assert_array_equal(cached[i][0], decoded[i][0])
        np.testing.assert_array_equal(cached[i][1], decoded[i][1])
    dm = SegDataModule(source, num_workers=0, cache=True)
    dm.setup("fit")
    assert isinstance(dm.dataset("train").samples, CachedSamples)
    assert isinstance(dm.dataset("val").samples, CachedSamples)


# -- python -m segopt.check --------------------------------------------------------


def _config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(
        "data:\n  source:\n    class_path: segopt.data.PairedFolder\n    init_args:\n"
        f"      root: {root}\n      class_names: [a, b, c]\n  num_workers: 0\n"
    )
    return path


def _check(config: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["check"])
    code = check_main(["--config", str(config)])
    return code, capsys.readouterr().out


def test_check_reports_counts_values_histogram_and_weights(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    _write_pairs(root, "train", 4)
    _write_pairs(root, "val", 2)
    code, out = _check(_config(tmp_path, root), monkeypatch, capsys)
    assert code == 0, out
    assert "[train] 4 pairs" in out and "[val] 2 pairs" in out
    assert "image sizes: {'32x24': 4}" in out
    assert "mask values in the files: [0, 1, 2]" in out
    assert "class pixels:" in out and "suggested class weights (median frequency, train): [" in out
    assert "OK: no problems found" in out


def test_check_lists_every_problem_at_once_and_exits_1(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    _write_pairs(root, "train", 4)
    _write_pairs(root, "val", 2)
    (root / "trainannot" / "0.png").unlink()  # image without mask
    (root / "val" / "1.png").unlink()  # mask without image
    Image.fromarray(np.full((24, 32), 9, np.uint8)).save(root / "trainannot" / "2.png")  # value >= num_classes
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "trainannot" / "3.png")  # wrong size
    code, out = _check(_config(tmp_path, root), monkeypatch, capsys)
    assert code == 1
    assert "PROBLEMS (4):" in out
    assert f"image(s) without a mask in {root / 'trainannot'}" in out
    assert f"mask(s) without an image in {root / 'val'}" in out
    assert f"{root / 'trainannot' / '2.png'}: mask value(s) ≥ num_classes=3 and not void: 9 (768 px)" in out
    assert f"{root / 'trainannot' / '3.png'}: mask is 5x5 but its image" in out


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared" / "data").is_dir(), reason="no ../shared/data")
def test_check_on_membrane_config(monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "argv", ["check"])
    code = check_main(["--config", "configs/amp.yaml", "--config", "configs/data/membrane.yaml"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[train] 24 pairs" in out and "[val] 6 pairs" in out
    assert "mask values in the files: [0, 255]" in out


def test_normalize_on_device_gives_the_same_batches_after_transfer():
    def first_batch(on_device: bool) -> tuple[SegDataModule, dict]:
        torch.manual_seed(3)
        dm = SegDataModule(
            SyntheticShapes(size=40, num_train=4, num_val=2),
            batch_size=4,
            num_workers=0,
            train_size=(32, 32),
            resize_mode="crop",
            normalize_on_device=on_device,
        )
        return dm, next(iter(dm.train_dataloader()))

    _, reference = first_batch(False)
    dm, narrow = first_batch(True)
    assert narrow["image"].dtype == torch.uint8  # 4x fewer bytes than float32
    assert narrow["mask"].dtype == torch.int32  # the synthetic int64 masks come out of OpenCV as int32
    moved = dm.on_after_batch_transfer(narrow, 0)
    assert moved["image"].dtype == torch.float32 and moved["mask"].dtype == torch.int64
    torch.testing.assert_close(moved["image"], reference["image"], atol=1e-5, rtol=0)
    assert reference["mask"].dtype == torch.int32  # masks travel narrow in either format
    assert torch.equal(moved["mask"], reference["mask"].long())
    assert dm.on_after_batch_transfer(reference, 0)["image"] is reference["image"]  # float batches untouched


@pytest.mark.parametrize(("cores", "workers", "prefetch"), [(1, 1, 4), (2, 1, 4), (3, 2, 2), (16, 8, 2), (64, 8, 2)])
def test_workers_and_prefetch_are_sized_from_the_cores(monkeypatch, cores: int, workers: int, prefetch: int):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert default_num_workers() == workers
    dm = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2))
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.prefetch_factor) == (workers, prefetch)
    assert SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), num_workers=0).train_dataloader().prefetch_factor is None


def test_training_on_a_cuda_gpu_pins_batches_and_normalises_on_the_device():
    dm = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), batch_size=2, num_workers=0)
    dm.trainer = SimpleNamespace(accelerator=CUDAAccelerator(), world_size=1, global_rank=0)
    assert dm.train_dataloader().pin_memory is True
    assert dm.dataset("train")[0]["image"].dtype == torch.uint8
    assert dm.dataset("val")[0]["image"].dtype == torch.float32  # evaluation batches stay float
    cpu = SegDataModule(SyntheticShapes(size=16, num_train=4, num_val=2), batch_size=2, num_workers=0)
    cpu.trainer = SimpleNamespace(accelerator=CPUAccelerator(), world_size=1, global_rank=0)
    assert cpu.train_dataloader().pin_memory is False
    assert cpu.dataset("train")[0]["image"].dtype == torch.float32
