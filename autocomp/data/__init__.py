"""Data registry: ``digits`` (default), ``cifar10`` and ``imagefolder:PATH``.

Every data set is decoded once into memory as normalised float tensors. The search scores
candidates on ``val``, a subset carved from the training split; ``test`` is only used for the
final report; ``train`` (the rest of the training split) feeds batch-norm recalibration and
training.

Example:
    >>> from autocomp.data import load_data
    >>> data = load_data("digits", val_size=300)
    >>> data.input_shape, len(data.val)
    ((1, 8, 8), 300)
"""

from __future__ import annotations

from autocomp.data.bundle import DataBundle, Preprocess, Split
from autocomp.data.sources import DATASETS, list_datasets, load_data

__all__ = ["DATASETS", "DataBundle", "Preprocess", "Split", "list_datasets", "load_data"]
