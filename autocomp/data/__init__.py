"""Data registry: ``digits`` (default, in memory), ``cifar10`` and ``imagefolder:PATH`` (streamed).

The search scores candidates on ``val``, a fixed random subset carved from the training split,
and recalibrates batch norm on ``calibration``, a fixed subset of the rest; both are decoded
into memory (``uint8``) when they fit, and their indices are stored in the run. ``test`` is only
used for the final report; ``train`` (the training split less ``val``) feeds training and
fine-tuning, streamed with augmentation. Memory is bounded by the subsets, not the data set.

Example:
    >>> from autocomp.data import load_data
    >>> data = load_data("digits", val_size=300)
    >>> data.input_shape, len(data.val)
    ((1, 8, 8), 300)
"""

from __future__ import annotations

from autocomp.data.bundle import DataBundle, LoaderSettings, Preprocess, Split, StreamSplit, Subsets, TensorSplit
from autocomp.data.sources import DATASETS, list_datasets, load_data

__all__ = ["DATASETS", "DataBundle", "LoaderSettings", "Preprocess", "Split", "StreamSplit", "Subsets", "TensorSplit",
           "list_datasets", "load_data"]
