"""Data: sources, joint transforms and the datamodule."""

from segopt.data.datamodule import SegDataModule
from segopt.data.datasets import SegSource, TransformedDataset
from segopt.data.synthetic import SyntheticShapes
from segopt.data.transforms import Augment, Normalize

__all__ = ["Augment", "Normalize", "SegDataModule", "SegSource", "SyntheticShapes", "TransformedDataset"]
