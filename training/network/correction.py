"""The input correction (``[model] input_correction = "moments"``): a per-covariate, per-feature gain and power.

A second technology measures a gene with its own gain and non-linearity (a MERFISH panel against
scRNA-seq). inClust+ removes a batch by vector arithmetic in the latent space, after the encoder, but
the encoder itself then reads inputs it never saw on the reference and places the cells wrongly; a
decoder trained to predict the reference's unseen genes extrapolates from there (issue 24: under a
simulated per-gene gain and bend the decoder fell from 1.02x to 0.90x the cosine kNN). This module
corrects the encoder's input, before it, for a cell of covariate ``c``:

    x  ->  gain[c, f] * sign(x) * |x| ^ power[c, f]         (zero stays zero: dropout is left alone)

The tables are fitted once from the training data, not learned (so they cannot absorb biology the
loss would rather explain): per feature, the mean and standard deviation of log |x| over a covariate's
non-zero values are matched to those of the reference covariate, the one with the most cells that
measure the feature. This is ComBat's per-gene location/scale adjustment, done on the log of the non-zero
values: a gain shifts their location, a power scales their spread, so both are undone exactly. Levels
or features with fewer than ``MIN_VALUES`` non-zero values keep the identity (gain 1, power 1).
"""

from __future__ import annotations

import numpy as np
import torch

BUFFERS = ("input_gain", "input_power", "input_reference")  # a corrected module's tables: [C, F], [C, F], [3, F]
MIN_VALUES = 20  # non-zero values a covariate needs in a feature for its moments to be matched
POWER_RANGE = (0.25, 4.0)  # a fitted power is clipped into this range (a few odd values cannot invert a gene)


def log_moments(x) -> np.ndarray:
    """[3, features]: count, mean and standard deviation of log |x| over each column's non-zero entries."""
    import scipy.sparse as sp  # (here: a training process imports this module and not scipy)

    x = sp.csr_matrix(x)
    x.eliminate_zeros()
    logs = np.log(np.abs(x.data.astype(np.float64)))
    n = np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)
    s1 = np.bincount(x.indices, logs, minlength=x.shape[1])
    s2 = np.bincount(x.indices, logs * logs, minlength=x.shape[1])
    mean = s1 / np.maximum(n, 1)
    sd = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean * mean, 0.0))
    return np.stack([n, mean, sd])


def rows_for(moments: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain, power) that map values with ``moments`` onto the ``reference`` moments (both [3, features])."""
    usable = (moments[0] >= MIN_VALUES) & (reference[0] >= MIN_VALUES) & (moments[2] > 1e-6) & (reference[2] > 1e-6)
    power = np.where(usable, reference[2] / np.where(usable, moments[2], 1.0), 1.0).clip(*POWER_RANGE)
    log_gain = np.where(usable, reference[1] - power * moments[1], 0.0)
    return np.exp(log_gain).astype(np.float32), power.astype(np.float32)


def fit(x, covariate: np.ndarray, measuring: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit the tables on training cells: (gain [C, F], power [C, F], reference moments [3, F]).

    ``x`` cells x features (preprocessed, zero-filled where unmeasured), ``covariate`` each cell's level,
    ``measuring`` [C, F] how many cells of each level measure each feature (it picks each feature's
    reference level; unmeasured zeros never enter the moments, which see non-zero values only)."""
    import scipy.sparse as sp

    x = sp.csr_matrix(x)
    levels = measuring.shape[0]
    per_level = np.stack([log_moments(x[covariate == c]) for c in range(levels)])  # [C, 3, F]
    ref_level = measuring.argmax(0)
    reference = per_level[ref_level, :, np.arange(x.shape[1])].T  # [3, F]
    gains, powers = zip(*(rows_for(per_level[c], reference) for c in range(levels)))
    return np.stack(gains), np.stack(powers), reference.astype(np.float32)


def apply(x: torch.Tensor, gain: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """``gain * sign(x) * |x| ^ power``, elementwise (``gain``/``power`` broadcast to x: a cell's rows of the tables)."""
    return gain * torch.sign(x) * torch.abs(x).pow(power)


def corrected_rows(module, x, features, covariate) -> "np.ndarray":
    """Cells ``x`` (numpy, columns = the module's global ``features``) as its encoder reads them: through the input
    correction's rows of each cell's ``covariate`` (ints), or unchanged for a module without one. The neighbour
    read-out's input lookup compares cells in this space (training/readout.py, its exported graphs)."""
    x = np.asarray(x, dtype=np.float32)
    if getattr(module, "input_gain", None) is None:
        return x
    cols = torch.as_tensor(np.asarray(features, dtype=np.int64))
    cov = torch.as_tensor(np.asarray(covariate, dtype=np.int64))
    with torch.no_grad():
        return apply(torch.from_numpy(np.ascontiguousarray(x)), module.input_gain[cov][:, cols], module.input_power[cov][:, cols]).numpy()
