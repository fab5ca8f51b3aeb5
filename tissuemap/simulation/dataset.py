"""Draw a whole data set and write it, all or nothing, into one folder (see :mod:`tissuemap.simulation`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from tissuemap import __version__
from tissuemap.log import logger
from tissuemap.outputs import staged_outputs
from tissuemap.progress import Progress
from tissuemap.simulation.genes import gene_table
from tissuemap.simulation.image import HIRES_SIZE, LOWRES_SIZE, slide_image, tissue_picture
from tissuemap.simulation.layout import capture_area, tissue_section
from tissuemap.simulation.parameters import SimulationParameters
from tissuemap.simulation.profiles import cell_type_table, expression_profiles
from tissuemap.simulation.reference import simulate_reference
from tissuemap.simulation.spaceranger import write_spaceranger_outs
from tissuemap.simulation.spatial import TissueZones, cell_abundance, platform_effect, spot_counts, tissue_zones
from tissuemap.simulation.visium_hd import hd_capture_area, simulate_hd_sample

SPACERANGER_VERSIONS = ("1.3.0", "2.1.0")  # samples alternate between the two positions-file layouts


def sample_names(n_samples: int) -> list[str]:
    """``sample1``, ``sample2``, ..."""
    return [f"sample{i + 1}" for i in range(n_samples)]


def simulate_dataset(params: SimulationParameters, outdir: str | os.PathLike) -> Path:
    """Simulate a reference and ``n_samples`` Visium samples with known cell abundance; write them to ``outdir``.

    Writes ``reference.h5ad``, ``samples/<NAME>/outs/`` (Space Ranger layout; with ``visium_hd``, the Visium HD
    ``binned_outputs/`` of :mod:`tissuemap.simulation.visium_hd`), ``samplesheet.csv`` (``sample,spaceranger_dir``,
    and ``bin_size`` for Visium HD), ``simulation.json`` (every parameter) and ``truth/``: ``profiles.csv`` (genes x
    types), ``platform_effect.csv``, ``cell_types.csv``, ``zones.csv``, ``reference_batches.csv``,
    ``reference_gene_effects.csv``, ``samples.csv`` and per sample ``<NAME>.cell_abundance.csv`` (spots x types,
    cells) and ``<NAME>.spots.csv`` (``zone``, ``detection_sensitivity``, ``total_cells``). The same parameters
    (seed included) give the same data. Returns ``outdir``.
    """
    params.validate()
    rng = np.random.default_rng(params.seed)
    genes = gene_table(params.n_genes)
    cell_types = cell_type_table(params, rng)
    profiles = expression_profiles(genes, cell_types, params, rng)
    logger.info(
        "simulating %d genes (%d mitochondrial), %d cell types in %d lineages (seed %d)",
        len(genes), int(genes["mitochondrial"].sum()), len(cell_types), params.n_lineages, params.seed,
    )
    reference, batches, gene_effects = simulate_reference(profiles, genes, cell_types, params, rng)
    cell_types["reference_cells"] = reference.obs["cell_type"].value_counts().reindex(cell_types.index).to_numpy()
    logger.info(
        "reference: %d cells from %d reactions (%s), confounding %.2f, median %.0f UMIs per cell",
        reference.n_obs, len(batches), ", ".join(f"{n} {t}" for t, n in batches["technology"].value_counts().items()),
        params.confounding, float(np.median(np.asarray(reference.X.sum(axis=1)))),
    )
    zones = tissue_zones(cell_types, params, rng)
    platform = platform_effect(len(genes), params, rng)
    area = hd_capture_area(params.n_spots, params.bin_size) if params.visium_hd else capture_area(params.n_spots, rng)

    outdir = Path(outdir)
    with staged_outputs(outdir) as staging:
        truth = staging / "truth"
        truth.mkdir()
        names = sample_names(params.n_samples)
        sample_rows = []
        with Progress(len(names), "simulated samples", "sample") as progress:
            for index, name in enumerate(names):
                if params.visium_hd:
                    row = simulate_hd_sample(staging, name, area, zones, cell_types, profiles, platform, genes, params,
                                             rng)
                else:
                    row = simulate_sample(staging, name, SPACERANGER_VERSIONS[index % len(SPACERANGER_VERSIONS)],
                                          area, zones, cell_types, profiles, platform, genes, params, rng)
                sample_rows.append(row)
                progress.update(index + 1)

        profiles.to_csv(truth / "profiles.csv")
        pd.DataFrame({"platform_effect": platform}, index=genes.index).to_csv(truth / "platform_effect.csv")
        cell_types.to_csv(truth / "cell_types.csv")
        pd.concat([zones.density, zones.composition], axis=1).to_csv(truth / "zones.csv")
        batches.to_csv(truth / "reference_batches.csv")
        gene_effects.to_csv(truth / "reference_gene_effects.csv")
        pd.DataFrame(sample_rows).to_csv(truth / "samples.csv", index=False)
        samplesheet = pd.DataFrame({"sample": names, "spaceranger_dir": [f"samples/{name}/outs" for name in names]})
        if params.visium_hd:
            samplesheet["bin_size"] = params.bin_size
        samplesheet.to_csv(staging / "samplesheet.csv", index=False)
        reference.write_h5ad(staging / "reference.h5ad", compression="gzip")
        (staging / "simulation.json").write_text(
            json.dumps({"tissuemap_version": __version__, "parameters": asdict(params),
                        "samples": sample_names(params.n_samples)}, indent=2)
        )
    logger.info("wrote the simulated data set to %s", outdir)
    return outdir


def simulate_sample(staging: Path, name: str, spaceranger_version: str, area: pd.DataFrame, zones: TissueZones,
                    cell_types: pd.DataFrame, profiles: pd.DataFrame, platform: np.ndarray, genes: pd.DataFrame,
                    params: SimulationParameters, rng: np.random.Generator) -> dict:
    """Draw one Visium sample; write its ``samples/<name>/outs/`` and truth tables; return its ``samples.csv`` row."""
    section = tissue_section(area, params, rng)
    abundance = cell_abundance(section, zones, cell_types, params, rng)
    reads = spot_counts(abundance, profiles, platform, params, rng)
    image = slide_image(area, rng)
    positions = pd.concat([area[["array_row", "array_col"]], image.pixels(area)], axis=1)
    positions.insert(0, "in_tissue", section.in_tissue.astype(int))
    barcodes = section.spots.index
    total_cells = abundance.sum(axis=1)
    pictures = {
        "hires": tissue_picture(section, total_cells, image, HIRES_SIZE),
        "lowres": tissue_picture(section, total_cells, image, LOWRES_SIZE),
    }
    write_spaceranger_outs(staging / "samples" / name / "outs", reads.counts, barcodes, genes, positions,
                           image.scalefactors(), pictures, library_id=name, spaceranger_version=spaceranger_version)

    truth = staging / "truth"
    pd.DataFrame(abundance, index=barcodes, columns=cell_types.index).to_csv(truth / f"{name}.cell_abundance.csv")
    spots = {"zone": section.spots["zone"], "detection_sensitivity": reads.detection, "total_cells": total_cells}
    pd.DataFrame(spots, index=barcodes).to_csv(truth / f"{name}.spots.csv")
    umis = np.asarray(reads.counts.sum(axis=1)).ravel()
    logger.info(
        "%s (Space Ranger %s layout): %d spots, %.1f cells and %.0f UMIs per spot (median), %.0f%% zeros",
        name, spaceranger_version, len(barcodes), np.median(total_cells), np.median(umis),
        100 * (1 - reads.counts.nnz / np.prod(reads.counts.shape)),
    )
    return {
        "sample": name,
        "spaceranger_version": spaceranger_version,
        "n_spots": len(barcodes),
        "mean_cells_per_spot": total_cells.mean(),
        "detection_mean": reads.detection_mean,
        "ambient_fraction": reads.ambient_fraction,
        "median_umis_per_spot": float(np.median(umis)),
    }
