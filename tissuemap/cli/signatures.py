"""``tissuemap signatures``: reference cell-type signatures by cell2location's negative binomial regression."""

from __future__ import annotations

from pathlib import Path

import click

from tissuemap.cli.options import checkpoint_options, layer_option, threads_option
from tissuemap.defaults import (
    SIGNATURES_BATCH_SIZE,
    SIGNATURES_CHECKPOINT_EVERY,
    SIGNATURES_LR,
    SIGNATURES_MAX_EPOCHS,
    SIGNATURES_METHOD,
    SIGNATURES_METHODS,
    SIGNATURES_MIN_CELLS_PER_TYPE,
    SIGNATURES_SEED,
    TRAINING_DEVICE,
)
from tissuemap.models.device import DEVICE_CHOICES

OUTPUT_PREFIX = "reference"


def _split_keys(ctx, param, value: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in value.split(",") if key.strip())
    if len(set(keys)) != len(keys):
        raise click.BadParameter(f"{value!r} names a column twice")
    return keys


@click.command("signatures")
@click.option("--reference", "reference_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotated single-cell reference (.h5ad, cells x genes, raw integer counts), e.g. the filtered one.")
@click.option("--labels-key", required=True, help="obs column of the reference holding each cell's type.")
@click.option("--batch-key", default=None,
              help="obs column holding each cell's batch (10x reaction or sample)  [default: one batch]")
@click.option("--covariate-keys", default="", show_default="none", callback=_split_keys,
              help="Comma-separated obs columns with technical effects (technology, donor...); their effects add up, "
                   "as in the cell2location package.")
@click.option("--method", type=click.Choice(SIGNATURES_METHODS), default=SIGNATURES_METHOD, show_default=True,
              help="nb: negative binomial regression; mean: per-type average counts (batch-free or non-UMI data).")
@click.option("--max-epochs", default=SIGNATURES_MAX_EPOCHS, show_default=True, type=int, help="Passes over the cells.")
@click.option("--batch-size", default=SIGNATURES_BATCH_SIZE, show_default=True, type=int, help="Cells per minibatch.")
@click.option("--lr", default=SIGNATURES_LR, show_default=True, type=float, help="Adam learning rate.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default=TRAINING_DEVICE, show_default=True,
              help="Where to train: auto takes a CUDA GPU when there is one.")
@click.option("--seed", default=SIGNATURES_SEED, show_default=True, type=int,
              help="Random seed: the same seed, reference and device give the same signatures.")
@click.option("--min-cells-per-type", default=SIGNATURES_MIN_CELLS_PER_TYPE, show_default=True,
              type=click.IntRange(min=1),
              help="Cell types with fewer cells are an error (merge or remove them, or lower this).")
@layer_option
@threads_option
@checkpoint_options(SIGNATURES_CHECKPOINT_EVERY, "epochs", f".{OUTPUT_PREFIX}.signatures.ckpt.pt")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def signatures(
    reference_path: Path,
    labels_key: str,
    batch_key: str | None,
    covariate_keys: tuple[str, ...],
    method: str,
    max_epochs: int,
    batch_size: int,
    lr: float,
    device: str,
    seed: int,
    min_cells_per_type: int,
    layer: str | None,
    threads: int | None,
    checkpoint_every: int,
    checkpoint_dir: Path | None,
    resume: bool,
    outdir: Path,
) -> None:
    """Estimate every cell type's expression signature from a single-cell reference.

    The nb method fits cell2location's regression (signatures, batch detection, ambient RNA per batch, covariate
    effects) and reports the posterior of the signatures; mean averages counts per type. Writes into OUTDIR:
    signatures.csv (genes x cell types), reference.signatures.h5ad (varm means/stds/q05/q95_per_cluster_mu_fg,
    uns['mod']), reference.signatures_history.json (ELBO per epoch, times, device, settings) and the QC plots
    reference.signatures_obs_vs_expected.png, plus for nb reference.signatures_elbo.png and
    reference.signatures_vs_average.png.
    """
    from tissuemap.checkpoint import Checkpointing
    from tissuemap.log import logger
    from tissuemap.outputs import prepare_outdir, staged_outputs
    from tissuemap.reference import read_reference
    from tissuemap.signatures import estimate_signatures, write_signature_outputs
    from tissuemap.threads import resolve_threads

    prepare_outdir(outdir)  # an unwritable folder is an error now, not after training
    checkpoint = Checkpointing((checkpoint_dir or outdir) / f".{OUTPUT_PREFIX}.signatures.ckpt.pt", checkpoint_every,
                               resume)
    reference = read_reference(reference_path, labels_key, batch_key=batch_key, covariate_keys=covariate_keys,
                               layer=layer, min_cells_per_type=min_cells_per_type)
    record = estimate_signatures(
        reference, labels_key, batch_key=batch_key, covariate_keys=covariate_keys, method=method,
        max_epochs=max_epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, checkpoint=checkpoint,
        threads=resolve_threads(threads),
    )
    reading = {"reference": str(reference_path), "layer": layer, "min_cells_per_type": min_cells_per_type}
    record["settings"].update(reading)
    reference.uns["mod"]["settings"].update({key: value for key, value in reading.items() if value is not None})
    with staged_outputs(outdir) as staging:
        write_signature_outputs(reference, record, staging, OUTPUT_PREFIX)
    checkpoint.discard()
    logger.info("Wrote signatures of %d cell types x %d genes to %s", record["n_types"], record["n_genes"],
                outdir / "signatures.csv")
