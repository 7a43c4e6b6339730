"""segopt: a PyTorch Lightning template for semantic segmentation."""

__version__ = "0.1.0"
