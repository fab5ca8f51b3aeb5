"""Default settings of the training steps, defined once: the step functions, their commands and `tissuemap run`'s
help read them from here. A module of constants only, so that the command line reads them without importing the
numerical libraries (``--help`` stays fast)."""

# Gene filter of the reference (tissuemap.genes, `tissuemap filter-genes`): the cell2location tutorial's values (the
# package's own defaults, 15 / 0.05 / 1.12, suit larger references)
CELL_COUNT_CUTOFF = 5
CELL_PERCENTAGE_CUTOFF2 = 0.03
NONZ_MEAN_CUTOFF = 1.12

# Where both training steps train (tissuemap.models.device.DEVICE_CHOICES): a CUDA GPU when there is one
TRAINING_DEVICE = "auto"

# Spatial mapping (tissuemap.mapping, `tissuemap map`)
MAPPING_N_CELLS_PER_LOCATION = 8.0  # the package's default; the lymph node tutorial uses 30
MAPPING_DETECTION_ALPHA = 20.0
MAPPING_MAX_EPOCHS = 30_000
MAPPING_LR = 0.002
MAPPING_MIN_SHARED_GENES = 1000
MAPPING_SEED = 0
MAPPING_CHECKPOINT_EVERY = 1000  # steps between checkpoints of `tissuemap map`

# Reference signatures (tissuemap.signatures, `tissuemap signatures`): the cell2location package's defaults
SIGNATURES_METHODS = ("nb", "mean")
SIGNATURES_METHOD = "nb"
SIGNATURES_MAX_EPOCHS = 250
SIGNATURES_BATCH_SIZE = 2500
SIGNATURES_LR = 0.002
SIGNATURES_SEED = 0
SIGNATURES_MIN_CELLS_PER_TYPE = 10
SIGNATURES_CHECKPOINT_EVERY = 25  # epochs between checkpoints of `tissuemap signatures`

# Visium HD input (tissuemap.io.visium_hd, `tissuemap qc --bin-size`, the samplesheet's bin_size): the bins read when
# none is chosen, in micrometres. 8 um bins hold one to a few cells, the size 10x recommends to start with.
DEFAULT_BIN_SIZE = 8
