"""Data: sources, mask decoding, joint transforms (plain PyTorch) and the datamodule (Lightning).

``segopt.data.SegDataModule`` is imported on first use, so the rest of the package works
without Lightning.
"""

from typing import Any

from segopt.data.datasets import CachedSamples, SegSource, TransformedDataset
from segopt.data.files import DataError
from segopt.data.folder import PairedFolder
from segopt.data.masks import BinaryMask, IndexMask, MaskDecoder, PaletteMask, TableMask
from segopt.data.synthetic import SyntheticShapes
from segopt.data.transforms import Augment, Normalize

__all__ = [
    "Augment",
    "BinaryMask",
    "CachedSamples",
    "DataError",
    "IndexMask",
    "MaskDecoder",
    "Normalize",
    "PairedFolder",
    "PaletteMask",
    "SegDataModule",
    "SegSource",
    "SyntheticShapes",
    "TableMask",
    "TransformedDataset",
]


def __getattr__(name: str) -> Any:
    if name == "SegDataModule":
        from segopt.data.datamodule import SegDataModule

        return SegDataModule
    raise AttributeError(f"module 'segopt.data' has no attribute {name!r}")
