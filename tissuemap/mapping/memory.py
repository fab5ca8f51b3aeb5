"""The memory plan of a mapping fit, made before training: what the full-data fit needs and what a minibatch fit of N
spots needs on the chosen device, against what the device has free; ``--batch-size auto`` takes full data when it
fits and the largest batch that fits otherwise. A fit that cannot fit ends here, with one line saying what to change.

The estimates add up the big arrays a fit creates (sizes from the samples before set-up, as upper bounds: every gene
of the shortest gene list, every non-zero count); what the process already holds (the samples read, the libraries)
is not in them, as it is not in what they are compared with: the memory still available (a GPU's free memory; on a
CPU the host's available memory, or the cgroup limit's remainder). The terms are checked against the peak RSS of CPU
fits (``benchmarks/RESULTS.md``, "Memory plan: estimated and measured"); no GPU figure was measured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from tissuemap.errors import InputError
from tissuemap.locations import SPOTS, Locations, shared_locations
from tissuemap.log import logger

GIB = 1 << 30
FLOAT32, INT64, FLOAT64 = 4, 8, 8
# float32 copies of the (2, P) guide parameters alive in a full-data step: parameters, gradient, Adam's two moments,
# and the objective's P-sized temporaries (noise, draw, θ, prior shapes and rates, autograd's saved tensors); the
# count was fitted with the terms below to the measured peak RSS
FULL_STEP_PARAMETER_COPIES = 7
# float32 copies of every location's (2, S, L) guide parameters a minibatch fit holds: the table and its row-wise
# Adam's two moments (tissuemap.models.row_adam)
MINIBATCH_LOCAL_COPIES = 3
MINIBATCH_BATCH_COPIES = 20  # float32 copies of the batch's (2, N, L) parameters a step makes (gather, draw, grads)
# float32 (rows × genes) temporaries of one likelihood block, and per non-zero count of a block: the counts of the
# block the calibration below was measured with (seven; μ, α+μ, logs, gradients at the counts). Today's block
# (likelihood.block_terms) works in two rows × genes scratch buffers and gathers two values per count, so these
# over-estimate; kept until the calibration is measured again (benchmarks/bench_scale.py calibrate)
BLOCK_TEMPORARIES = 7
NONZERO_TEMPORARIES = 6
OBJECTIVE_BYTES_PER_NONZERO = FLOAT32 + INT64  # each non-zero count's value and its position in its block
CSR_BYTES_PER_NONZERO = FLOAT32 + INT64  # torch CSR counts of a minibatch fit: value and int64 gene
GATHER_BYTES_PER_NONZERO = 6 * INT64  # a batch's gathered counts: positions, rows, genes, values, block indices
# export: four float64 summaries of every site (each sample's post_sample_* are views of them)
EXPORT_SUMMARY_COPIES = 4
INPUT_COPY_BYTES_PER_NONZERO = FLOAT32 + 4  # a sample's counts subset to the shared genes (CSR: value, int32 gene)
LAYER_BYTES_PER_NONZERO = FLOAT32 + 4  # one expected-expression layer (CSR: float32 value, int32 gene)
# what the itemised terms miss, fitted to the measured peak RSS of six CPU fits (benchmarks/RESULTS.md): libraries
# loaded after the plan (torch's compiler stack at the first Adam, ~70 MiB; matplotlib), the set-up's subset copy of
# the sparse counts, allocator slack
UNITEMISED_BYTES = 256 << 20
UNITEMISED_BYTES_PER_NONZERO = 14
SMALLEST_BATCH = 256  # fewer spots per step than this: the per-step overhead dominates, and no longer worth planning


@dataclass(frozen=True)
class MappingSize:
    """The dimensions that set a mapping fit's memory."""

    n_locations: int
    n_genes: int
    n_types: int
    n_batches: int
    n_groups: int
    n_nonzero: int  # non-zero counts (an upper bound before the genes are matched)

    @classmethod
    def of_inputs(cls, samples, signatures, n_groups: int) -> MappingSize:
        """Upper bounds from the samples (:class:`~tissuemap.mapping.data.SpatialSample`) and the signatures
        (genes × types) before set-up: genes of the shortest list, every non-zero count of every sample."""
        import scipy.sparse as sp

        def nonzero(matrix) -> int:
            return int(matrix.nnz) if sp.issparse(matrix) else int((matrix != 0).sum())

        return cls(
            n_locations=sum(sample.adata.n_obs for sample in samples),
            n_genes=min(len(signatures.index), *(sample.adata.n_vars for sample in samples)),
            n_types=len(signatures.columns),
            n_batches=len({sample.slide for sample in samples}),
            n_groups=n_groups,
            n_nonzero=sum(nonzero(sample.adata.X) for sample in samples),
        )

    @property
    def layout(self):
        from tissuemap.models.cell2location import SiteLayout

        return SiteLayout(self.n_locations, self.n_genes, self.n_types, self.n_batches, self.n_groups)

    @property
    def local_width(self) -> int:
        """L: latent values of one location (its n_s, b_s, z_sr, w_sf, y_s)."""
        from tissuemap.models.cell2location import LOCATION_SITES

        shapes = self.layout.shapes
        return sum(math.prod(shapes[name][1:]) for name in LOCATION_SITES)


def _block_bytes(rows: int, size: MappingSize, device_type: str) -> int:
    """Temporaries of one likelihood block of ``rows`` locations (the objective's block size on that device)."""
    import torch

    from tissuemap.models.cell2location.likelihood import default_block_rows

    block_rows = min(rows, default_block_rows(size.n_genes, torch.device(device_type)))
    nonzero = size.n_nonzero * block_rows // max(1, size.n_locations)
    return block_rows * size.n_genes * FLOAT32 * BLOCK_TEMPORARIES + nonzero * FLOAT32 * NONZERO_TEMPORARIES


def _export_bytes(size: MappingSize, expected_expression: bool) -> int:
    """Host memory of the export: the summaries and their per-sample copies, each sample's counts, the layers."""
    layers = size.n_types * size.n_nonzero * LAYER_BYTES_PER_NONZERO if expected_expression else 0
    return size.layout.size * FLOAT64 * EXPORT_SUMMARY_COPIES + size.n_nonzero * INPUT_COPY_BYTES_PER_NONZERO + layers


def _count_table_bytes(size: MappingSize) -> int:
    """The objective's per-batch count histograms (E × K × G, int64 while built, float32 kept)."""
    from tissuemap.models.negative_binomial import HISTOGRAM_MAX_COUNT

    return size.n_batches * HISTOGRAM_MAX_COUNT * size.n_genes * (INT64 + FLOAT32)


def full_data_bytes(size: MappingSize, device_type: str, expected_expression: bool = False) -> dict[str, int]:
    """Bytes a full-data fit adds, ``{"host": ..., "device": ...}`` (on a CPU all of it on the host, no "device").

    The dense float32 counts (S × G) are built on the host and held through training and export; training adds the
    objective's tables (one value and position per non-zero count, the count histograms), the guide's parameters
    with their gradient, Adam state and the step's temporaries, and one likelihood block; the export then adds the
    summaries, each sample's counts and, with ``expected_expression``, one sparse layer per cell type.
    """
    dense = size.n_locations * size.n_genes * FLOAT32
    training = (size.n_nonzero * OBJECTIVE_BYTES_PER_NONZERO + _count_table_bytes(size)
                + 2 * size.layout.size * FLOAT32 * FULL_STEP_PARAMETER_COPIES
                + _block_bytes(size.n_locations, size, device_type))
    export = _export_bytes(size, expected_expression)
    unitemised = UNITEMISED_BYTES + size.n_nonzero * UNITEMISED_BYTES_PER_NONZERO
    if device_type == "cuda":  # the host builds the counts and exports; the device holds the counts and trains
        return {"host": dense + export + unitemised, "device": dense + training}
    return {"host": dense + max(training, export) + unitemised}


def minibatch_bytes(size: MappingSize, batch_size: int, device_type: str,
                    expected_expression: bool = False) -> dict[str, int]:
    """Bytes a minibatch fit of ``batch_size`` spots per step adds (as :func:`full_data_bytes`).

    The counts stay sparse (torch CSR: a value and an int64 gene per non-zero count) next to the full-data count
    histograms; every location's guide parameters and their Adam moments are held; a step adds the batch's gathered
    counts, its parameters' draws and gradients, and one likelihood block of at most ``batch_size`` rows.
    """
    batch_size = min(batch_size, size.n_locations)
    batch_nonzero = size.n_nonzero * batch_size // max(1, size.n_locations)
    resident = (size.n_nonzero * CSR_BYTES_PER_NONZERO + (size.n_locations + 1) * INT64 + _count_table_bytes(size)
                + 2 * size.n_locations * size.local_width * FLOAT32 * MINIBATCH_LOCAL_COPIES)
    step = (batch_nonzero * GATHER_BYTES_PER_NONZERO
            + 2 * batch_size * size.local_width * FLOAT32 * MINIBATCH_BATCH_COPIES
            + _block_bytes(batch_size, size, device_type))
    export = _export_bytes(size, expected_expression)
    unitemised = UNITEMISED_BYTES + size.n_nonzero * UNITEMISED_BYTES_PER_NONZERO
    if device_type == "cuda":
        return {"host": export + unitemised, "device": resident + step}
    return {"host": resident + max(step, export) + unitemised}


def available_bytes(device) -> dict[str, int]:
    """Memory this process may still take: ``host`` (available host memory, within the cgroup's limit) and, on a
    GPU, ``device`` (``torch.cuda.mem_get_info``'s free bytes)."""
    available = {"host": _available_host_bytes()}
    if device.type == "cuda":
        import torch

        available["device"] = int(torch.cuda.mem_get_info(device)[0])
    return available


def _available_host_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo, or less if a cgroup limit (v2 or v1) leaves less."""
    available = math.inf
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():
            available = min(available, int(limit) - int(usage))
    if available is math.inf:  # no /proc (not Linux): the free physical pages
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(available)


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS of /proc/self/status; 0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class MemoryPlan:
    """What the map step trains with: ``batch_size`` None for full data, and the estimate it was chosen by."""

    batch_size: int | None
    needed: dict[str, int]
    available: dict[str, int]


def _gib(n_bytes: float) -> str:
    gib = n_bytes / GIB
    return f"{gib:.2f} GiB" if gib < 10 else f"{gib:.1f} GiB"


def _where(kind: str, device_type: str) -> str:
    if kind == "device":
        return "this GPU"
    return "the GPU's host" if device_type == "cuda" else "this machine"


def _shortfall(needed: dict[str, int], available: dict[str, int], device_type: str) -> str | None:
    """``"X GiB on WHERE, which has Y GiB free"`` for the first memory ``needed`` exceeds, else None."""
    for kind in ("device", "host"):
        if kind in needed and needed[kind] > available[kind]:
            return f"{_gib(needed[kind])} on {_where(kind, device_type)}, which has {_gib(available[kind])} free"
    return None


def _describe(needed: dict[str, int], available: dict[str, int], device_type: str) -> str:
    return "; ".join(f"{_gib(needed[kind])} ({_where(kind, device_type)} has {_gib(available[kind])} free)"
                     for kind in ("device", "host") if kind in needed)


def largest_batch(size: MappingSize, device_type: str, available: dict[str, int],
                  expected_expression: bool = False) -> int | None:
    """The most spots per step that fit (two significant digits, at most all spots), or None if not even
    :data:`SMALLEST_BATCH` does."""
    def fits(batch: int) -> bool:
        return _shortfall(minibatch_bytes(size, batch, device_type, expected_expression), available,
                          device_type) is None

    low, high = min(SMALLEST_BATCH, size.n_locations), size.n_locations
    if not fits(low):
        return None
    while low < high:  # the needs grow with the batch: the largest fitting one by bisection
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    digits = max(0, len(str(low)) - 2)
    return max(min(SMALLEST_BATCH, size.n_locations), low // 10 ** digits * 10 ** digits)


def plan_memory(size: MappingSize, device_type: str, batch_size: int | str | None, available: dict[str, int],
                expected_expression: bool = False, locations: Locations = SPOTS) -> MemoryPlan:
    """Check that the fit asked for fits, or choose one, and log the estimate.

    Parameters
    ----------
    batch_size
        ``None``: full data; an int: that many spots per step; ``"auto"``: full data if it fits, else the largest
        batch that fits (:func:`largest_batch`).
    available
        From :func:`available_bytes`.
    locations
        What the messages call the locations (:mod:`tissuemap.locations`).

    Raises
    ------
    InputError
        Before training, in one line saying what to change: if the full-data fit or the batch asked for does not
        fit, or if no batch does.
    """
    many = locations.many
    what = f"{size.n_locations:,} {many} x {size.n_genes:,} genes x {size.n_types} cell types"
    full = full_data_bytes(size, device_type, expected_expression)
    logger.info("memory plan for %s: full data needs %s", what, _describe(full, available, device_type))
    if batch_size is None or batch_size == "auto":
        short = _shortfall(full, available, device_type)
        if short is None:
            if batch_size == "auto":
                logger.info("--batch-size auto: full data fits; training on all %s at every step", many)
            return MemoryPlan(None, full, available)
        largest = largest_batch(size, device_type, available, expected_expression)
        if largest is None:
            raise InputError(_no_batch_fits(size, device_type, available, expected_expression, what, locations))
        if batch_size is None:
            raise InputError(f"the full-data fit of {what} needs {short}; use --batch-size auto (batches of up to "
                             f"{largest:,} {many} fit: a minibatch fit holds the counts sparse) or free memory")
        needed = minibatch_bytes(size, largest, device_type, expected_expression)
        logger.info("--batch-size auto: full data does not fit (%s); training on %s %s per step, which needs %s",
                    short, f"{largest:,}", many, _describe(needed, available, device_type))
        return MemoryPlan(largest, needed, available)
    needed = minibatch_bytes(size, int(batch_size), device_type, expected_expression)
    short = _shortfall(needed, available, device_type)
    if short is not None:
        largest = largest_batch(size, device_type, available, expected_expression)
        if largest is None:
            raise InputError(_no_batch_fits(size, device_type, available, expected_expression, what, locations))
        raise InputError(f"--batch-size {batch_size}: a minibatch fit of {what} needs {short}; use --batch-size "
                         f"{largest} or auto")
    logger.info("minibatch of %s %s per step needs %s", f"{int(batch_size):,}", many,
                _describe(needed, available, device_type))
    return MemoryPlan(int(batch_size), needed, available)


def _no_batch_fits(size: MappingSize, device_type: str, available: dict[str, int], expected_expression: bool,
                   what: str, locations: Locations) -> str:
    smallest = min(SMALLEST_BATCH, size.n_locations)
    short = _shortfall(minibatch_bytes(size, smallest, device_type, expected_expression), available, device_type)
    layers = " or leave out --expected-expression" if expected_expression else ""
    return (f"mapping {what} needs at least {short} even in batches of {smallest} {locations.many} (every "
            f"{locations.one}'s parameters and the sparse counts); map fewer samples together{layers}, free memory, or use a machine with more")


def plan_mapping_memory(samples, signatures, device, batch_size: int | str | None = None,
                        expected_expression: bool = False, priors=None) -> MemoryPlan:
    """:func:`plan_memory` for the samples and signatures read (before set-up), on ``device`` (a ``torch.device``)
    with its available memory now."""
    from tissuemap.models.cell2location import MappingPriors

    n_groups = (priors if priors is not None else MappingPriors()).n_groups
    size = MappingSize.of_inputs(samples, signatures, n_groups)
    logger.info("this process holds %s now (the inputs read, the libraries); the plan adds to that",
                _gib(resident_bytes()))
    return plan_memory(size, device.type, batch_size, available_bytes(device), expected_expression,
                       shared_locations(sample.locations for sample in samples))
