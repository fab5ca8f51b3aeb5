"""Spatial mapping with the cell2location model: data set-up, training, and export of the posterior to AnnData.

The steps, each a plain function in a module of its own:

1. :func:`~tissuemap.mapping.data.read_qc_sample` and :func:`~tissuemap.mapping.data.read_signatures` read and
   check the inputs (QC'd ``NAME.qc.h5ad`` files and a genes × cell types signature table).
2. :func:`~tissuemap.mapping.setup.setup_mapping` subsets every sample and the signatures to their shared genes, in
   one order, stacks the samples (one batch per slide, each batch's spots contiguous) and computes the prior mean
   detection d̂.
3. :func:`~tissuemap.mapping.fit.fit_mapping` trains the mean-field guide with the shared loop of
   :mod:`tissuemap.training`: one full-data step per iteration, the whole data on the device, no host
   synchronisation inside the loop except about once a second (progress and NaN check, paced by
   :class:`tissuemap.progress.Progress`) and at checkpoints (:mod:`tissuemap.checkpoint`), from which an interrupted
   fit continues with the same numbers. Whether the loss levelled off is judged by :mod:`tissuemap.convergence`.
   With a batch size, :mod:`~tissuemap.mapping.minibatch` trains the same model on minibatches of spots instead
   (stochastic variational inference, for data too large for full-data steps).
4. :func:`~tissuemap.mapping.export.export_mapping` writes each sample's posterior into an AnnData, in the
   cell2location package's naming, with exact log-normal summaries of the guide (no posterior sampling), computed
   a fixed chunk at a time (the export's temporaries do not grow with the sample).

Between steps 1 and 2, :func:`~tissuemap.mapping.memory.plan_mapping_memory` estimates what the fit needs on the
device, against what is free there: a fit that cannot fit stops before set-up, and ``--batch-size auto`` is resolved
(full data when it fits, else the largest batch that fits).

:func:`~tissuemap.mapping.step.map_samples` runs them all for ``tissuemap map``, and
:func:`~tissuemap.mapping.step.write_mapping_outputs` writes its files.

Reproducibility: the only randomness of a fit is the guide's noise, drawn from a ``torch.Generator`` seeded with
``seed`` (the guide starts deterministically at the prior means). On a CPU, the same seed, data, options, torch
version and thread count give bitwise-equal outputs, also when a run is interrupted and continued with ``--resume``
(the checkpoint holds the generator's state). On a GPU, repeated runs are expected to agree to about 1e-6 relative
per step, not bit for bit, and the small differences can grow over thousands of steps (posterior summaries then agree
to roughly 1e-3 relative): the objective adds each observed count once (its scatter-adds never hit an index twice, so
no atomics race), but cuBLAS may choose matrix-product algorithms whose reductions run in another order, the objective
is compiled with ``torch.compile`` on a GPU (fused reductions, checked against the plain objective to 1e-3), and
``torch.use_deterministic_algorithms`` is not switched on for mapping. CPU and GPU results differ at the same level.
"""

from tissuemap.mapping.data import (
    SpatialSample,
    attach_cell_counts,
    check_training_options,
    read_qc_sample,
    read_signatures,
)
from tissuemap.mapping.export import (
    SUMMARIES,
    expected_expression_layers,
    expected_spot_counts,
    export_mapping,
    mapping_summaries,
)
from tissuemap.mapping.fit import fit_mapping
from tissuemap.mapping.fit_record import MappingFit
from tissuemap.mapping.setup import MappingSetup, detection_mean, setup_mapping
from tissuemap.mapping.step import MappingResult, history_record, map_samples, write_mapping_outputs

__all__ = [
    "SUMMARIES",
    "MappingFit",
    "MappingResult",
    "MappingSetup",
    "SpatialSample",
    "attach_cell_counts",
    "check_training_options",
    "detection_mean",
    "expected_expression_layers",
    "expected_spot_counts",
    "export_mapping",
    "fit_mapping",
    "history_record",
    "map_samples",
    "mapping_summaries",
    "read_qc_sample",
    "read_signatures",
    "setup_mapping",
    "write_mapping_outputs",
]
