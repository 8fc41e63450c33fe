"""Training rows as tensors on the training device, gathered per step by indexing (no DataLoader).

Everything a step needs - the feature matrix, the mask table, each row's cell, masks, covariate
and label - is moved to the device once. A step then gathers its batch with a few index
operations on the device: no per-row Python objects, no host-to-device copy per step. A sparse
matrix (too big to hold dense, see training/assembly/data.py DENSE_LIMIT) stays CSR on the device and only
the batch's rows are densified, there.

Batches are [K, n, ...]: member k of an ensemble trained side by side (training/network/stacked.py) gets
its own rows in block k.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from inclust_plus.sparse import is_sparse

from inclust_plus.training.assembly.data import TrainingData
from inclust_plus.training.fast_step.manual_step import label_rows


class DeviceRows:
    """The training table of ``data`` on ``device``."""

    def __init__(self, data: TrainingData, device: torch.device):
        self.device = device
        self.sparse = is_sparse(data.x)
        if self.sparse:
            csr = data.x.tocsr()
            self.crow = torch.from_numpy(csr.indptr.astype(np.int64)).to(device)
            self.col = torch.from_numpy(csr.indices.astype(np.int64)).to(device)
            self.val = torch.from_numpy(csr.data.astype(np.float32)).to(device)
            self.n_features = csr.shape[1]
        else:
            self.x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).to(device)
        self.row_cell = torch.from_numpy(data.row_cell).to(device)
        self.row_input = torch.from_numpy(data.row_input).to(device)
        self.row_output = torch.from_numpy(data.row_output).to(device)
        self.cell_covariate = torch.from_numpy(data.covariate).to(device)
        self.cell_label = torch.from_numpy(data.labels).to(device)
        self.masks = torch.from_numpy(data.mask_table.array()).to(device)
        self.n_labels = len(data.label_categories)

    @cached_property
    def label_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell: one-hot label (zero where unlabeled) and 1.0 where unlabeled; built on first use,
        by the hand-written step only (the autograd path never needs them)."""
        return label_rows(self.cell_label, self.n_labels)

    def _dense_rows(self, cells: torch.Tensor) -> torch.Tensor:
        """Rows ``cells`` (1-D) of the matrix, dense [len(cells), features]."""
        if not self.sparse:
            return self.x.index_select(0, cells)
        starts, ends = self.crow[cells], self.crow[cells + 1]
        lengths = ends - starts
        total = int(lengths.sum())  # the one size the gather needs
        row = torch.repeat_interleave(torch.arange(len(cells), device=self.device), lengths, output_size=total)
        first = torch.cumsum(lengths, 0) - lengths
        src = starts[row] + torch.arange(total, device=self.device) - first[row]
        out = torch.zeros(len(cells), self.n_features, device=self.device)
        out[row, self.col[src]] = self.val[src]
        return out

    def batch(self, rows: torch.Tensor, label_tables: bool = False):
        """x, input mask, output mask [K, n, features], covariate and label [K, n] of ``rows`` [K, n];
        with ``label_tables`` also the rows' one-hot labels [K, n, labels] and unlabeled flags [K, n, 1]."""
        k, n = rows.shape
        flat = rows.reshape(-1)
        cells = self.row_cell.index_select(0, flat)  # index_select: a third of indexing's cost on a CPU
        x = self._dense_rows(cells).reshape(k, n, -1)
        in_mask = self.masks.index_select(0, self.row_input.index_select(0, flat)).reshape(k, n, -1)
        out_mask = self.masks.index_select(0, self.row_output.index_select(0, flat)).reshape(k, n, -1)
        out = (x, in_mask, out_mask, self.cell_covariate.index_select(0, cells).reshape(k, n),
               self.cell_label.index_select(0, cells).reshape(k, n))
        if label_tables:
            one_hot, unlabeled = self.label_tables
            out += ((one_hot.index_select(0, cells).reshape(k, n, -1), unlabeled.index_select(0, cells).reshape(k, n, 1)),)
        return out
