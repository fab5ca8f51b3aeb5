"""The reference's counts on the training device (:class:`DeviceCounts`): dense when they fit, else padded sparse
rows, handing out dense minibatch rows without a host round trip."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# The count matrix is held dense on the device when it takes at most this share of the free memory, else as
# padded sparse rows; the rest is left for the minibatch's tensors and their gradients.
DENSE_MEMORY_SHARE = 0.5
COUNT_STORAGES = ("auto", "dense", "sparse")
# Counts copied to the device at a time when densifying (64 MiB of float32).
DENSE_BLOCK_VALUES = 2**24


def _available_host_memory() -> int | None:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``); ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DeviceCounts:
    """The reference's count matrix resident on the training device, handing out dense minibatch rows.

    Dense float32 when it fits (``DENSE_MEMORY_SHARE`` of the free memory), else padded sparse rows: every cell's
    non-zero (gene, count) pairs padded with (0, 0) to the longest row, so a minibatch is two gathers and a
    scatter-add on the device, with no host round trip.
    """

    def __init__(self, counts, device, storage: str = "auto"):
        import torch

        if storage not in COUNT_STORAGES:
            raise ValueError(f"storage must be one of {COUNT_STORAGES}, not {storage!r}")
        counts = sp.csr_matrix(counts, dtype=np.float32)
        self.n_cells, self.n_genes = counts.shape
        self.device = device
        if storage == "auto":
            dense_bytes = 4 * self.n_cells * self.n_genes
            if device.type == "cuda":
                available = torch.cuda.mem_get_info(device)[0]
            else:
                available = _available_host_memory()
            storage = "dense" if available is None or dense_bytes <= DENSE_MEMORY_SHARE * available else "sparse"
        self.storage = storage
        if storage == "dense":
            # densified in blocks of rows, so the host never holds a dense copy of the whole matrix
            self.dense = torch.empty(self.n_cells, self.n_genes, device=device)
            block = max(1, DENSE_BLOCK_VALUES // max(self.n_genes, 1))
            for start in range(0, self.n_cells, block):
                self.dense[start:start + block] = torch.from_numpy(counts[start:start + block].toarray()).to(device)
        else:
            lengths = np.diff(counts.indptr)
            width = max(int(lengths.max(initial=0)), 1)
            rows = np.repeat(np.arange(self.n_cells), lengths)
            slots = np.arange(counts.nnz) - counts.indptr[rows]
            genes = np.zeros((self.n_cells, width), dtype=np.int32)  # widened per minibatch: a third less memory
            values = np.zeros((self.n_cells, width), dtype=np.float32)
            genes[rows, slots] = counts.indices
            values[rows, slots] = counts.data
            self.genes = torch.from_numpy(genes).to(device)
            self.values = torch.from_numpy(values).to(device)

    def rows(self, cell_ids):
        """Dense float32 counts of the cells ``cell_ids`` (a long tensor on the device), cells × genes."""
        import torch

        if self.storage == "dense":
            return self.dense.index_select(0, cell_ids)
        batch = torch.zeros(len(cell_ids), self.n_genes, device=self.device)
        # padding adds 0 to gene 0; adding, not assigning, keeps it from overwriting a real count there
        return batch.scatter_add_(1, self.genes[cell_ids].long(), self.values[cell_ids])


