"""Data in plain PyTorch: sources, mask decoding, joint transforms, sampling and class pixel counts.

The Lightning datamodule that serves them is :class:`segopt.lightning.SegDataModule`.
"""

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
    "SegSource",
    "SyntheticShapes",
    "TableMask",
    "TransformedDataset",
]

