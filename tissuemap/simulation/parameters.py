"""Every number the simulator uses, in one dataclass: the size options a user sets and the generator's constants.

Kept free of numpy so that the command line can show the defaults without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from tissuemap.errors import InputError

MIN_CELLS_PER_TYPE = 50  # reference cells per type that --n-cells must allow (rare types get 25-49)
MIN_MARKERS_PER_GROUP = 5  # marker genes of every lineage and every cell type, at the least
VISIUM_CELLS_PER_SPOT = 8.0  # a 55 um Visium spot
HD_CELLS_PER_8UM_BIN = 2.0  # an 8 um Visium HD bin holds one to three cells (parts of cells)


def default_cells_per_location(visium_hd: bool, bin_size: int) -> float:
    """Mean cells per spot, or per bin of ``bin_size`` um (scaled by the bin's area) for Visium HD."""
    return HD_CELLS_PER_8UM_BIN * (bin_size / 8) ** 2 if visium_hd else VISIUM_CELLS_PER_SPOT


@dataclass(frozen=True)
class SimulationParameters:
    """Parameters of one simulated data set; written whole to ``simulation.json``.

    The first block are the command-line options; the rest are the generator's constants (log-normal ``*_log_sd``
    are standard deviations of the natural log; fractions are of a cell's or a spot's expected molecules).
    """

    seed: int = 0
    n_samples: int = 2
    n_spots: int = 600
    n_genes: int = 2000
    n_cell_types: int = 12
    n_cells: int = 3000
    n_batches: int = 6
    n_zones: int = 5
    confounding: float = 0.3
    n_cells_per_location: float = VISIUM_CELLS_PER_SPOT
    detection_alpha: float = 20.0
    visium_hd: bool = False  # Visium HD bins (square grid, binned_outputs/ layout) instead of Visium spots
    bin_size: int = 8  # Visium HD: the bins drawn, in um; the larger bin sizes are written aggregated from them

    # expression profiles
    mean_molecules_per_cell: float = 3000.0  # expected UMIs of an average cell in the reference at detection 1
    cell_type_rna_log_sd: float = 0.3  # RNA content differs between types
    baseline_log_sd: float = 1.7  # gene means span orders of magnitude
    cell_type_noise_log_sd: float = 0.3  # type-to-type variation of every gene, beyond markers
    lineage_marker_fraction: float = 0.01  # of genes, per lineage
    lineage_marker_log_fold: float = 1.4  # log fold change (x4) of lineage markers in the lineage's types
    type_marker_fraction: float = 0.01  # of genes, per cell type
    type_marker_log_fold: float = 2.3  # log fold change (x10) of a type's own markers
    marker_log_fold_sd: float = 0.5
    mitochondrial_fraction: float = 0.05  # of a cell's molecules from the 13 mitochondrial genes

    # single-cell reference
    rare_type_min_cells: int = 25
    rare_type_max_cells: int = 49
    type_size_log_sd: float = 0.8  # imbalance of the other types' cell numbers
    confounded_batches_per_type: int = 2  # batches a type comes from when --confounding is 1
    batch_detection_log_sd: float = 0.3
    batch_ambient_fraction_min: float = 0.01
    batch_ambient_fraction_max: float = 0.05
    cell_size_log_sd: float = 0.35
    technology_effect_log_sd: float = 0.4  # 5' chemistry relative to 3' (the reference technology), per gene
    overdispersion_rate: float = 3.0  # v_g ~ Exponential(3), alpha_g = 1 / v_g^2, as the model's prior mean

    # Visium samples
    rare_spot_fraction: float = 0.02  # spots holding cells of one rare type
    zone_specific_share: float = 0.7  # of a zone's cells from its zone-specific types (rest: ubiquitous types)
    zone_density_log_sd: float = 0.25  # cell density differs between zones
    density_field_log_sd: float = 0.2  # and varies smoothly within the tissue
    ubiquitous_field_log_sd: float = 0.3  # ubiquitous types' share varies smoothly
    composition_noise_shape: float = 5.0  # Gamma(5, 5) spot-to-spot noise on every expected cell number
    platform_effect_log_sd: float = 0.4  # Visium vs single-cell, per gene
    visium_detection_mean: float = 0.1  # a Visium spot captures ~10% of the molecules the reference sees per cell
    visium_detection_sample_shape: float = 10.0  # per-sample detection y_e ~ Gamma(10, 10 / mean), as in the model
    spatial_ambient_fraction_min: float = 0.02
    spatial_ambient_fraction_max: float = 0.08
    # Visium HD bins capture less per cell than Visium spots: ~150-200 UMIs in an 8 um bin of two cells
    hd_detection_mean: float = 0.03

    def validate(self) -> None:
        """Raise :class:`InputError` naming the option when the sizes cannot make a coherent data set."""
        positive = {
            "--n-samples": self.n_samples,
            "--n-batches": self.n_batches,
            "--n-zones": self.n_zones,
            "--n-cells-per-location": self.n_cells_per_location,
            "--detection-alpha": self.detection_alpha,
        }
        for option, value in positive.items():
            if not value > 0:
                raise InputError(f"{option} {value}: must be positive")
        if self.visium_hd:
            from tissuemap.samplesheet import BIN_SIZES

            if self.bin_size not in BIN_SIZES:
                raise InputError(f"--bin-size {self.bin_size}: use one of {', '.join(map(str, BIN_SIZES))}")
        if not 0 <= self.confounding <= 1:
            raise InputError(f"--confounding {self.confounding}: must be between 0 and 1")
        if self.n_cell_types < 3:
            raise InputError(
                f"--n-cell-types {self.n_cell_types}: need at least 3 (a rare, a ubiquitous and a zone type)"
            )
        if self.n_cells < MIN_CELLS_PER_TYPE * self.n_cell_types:
            raise InputError(
                f"--n-cells {self.n_cells}: too few for {self.n_cell_types} cell types; "
                f"use at least {MIN_CELLS_PER_TYPE * self.n_cell_types}"
            )
        if self.n_spots < 10 * self.n_zones:
            raise InputError(
                f"--n-spots {self.n_spots}: too few for {self.n_zones} zones; use at least {10 * self.n_zones}"
            )
        needed = self.min_genes()
        if self.n_genes < needed:
            raise InputError(
                f"--n-genes {self.n_genes}: too few for {self.n_cell_types} cell types' markers; use at least {needed}"
            )

    @property
    def n_lineages(self) -> int:
        """Lineages the cell types are grouped in (about four types each)."""
        return max(2, round(self.n_cell_types / 4))

    def min_genes(self) -> int:
        """Fewest genes that hold every marker set with as many other genes beside them, plus mitochondrial ones."""
        from tissuemap.simulation.genes import MITOCHONDRIAL_SYMBOLS

        return len(MITOCHONDRIAL_SYMBOLS) + 2 * MIN_MARKERS_PER_GROUP * (self.n_lineages + self.n_cell_types)
