"""Mapping stays finite on awkward but legitimate data: near-empty spots, genes the reference never expresses and
library sizes that differ a hundredfold."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from tissuemap.mapping import (
    SUMMARIES,
    export_mapping,
    fit_mapping,
    read_qc_sample,
    read_signatures,
    setup_mapping,
)

N_SPOTS, N_GENES, N_TYPES = 60, 50, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def awkward_setup(tmp_path_factory):
    """Spots 0-19 hold 1 to 5 UMIs (spot 0 none on the shared genes), spots 20-39 a hundred times the library of
    spots 40-59; the signatures of genes 0-9 are zero in every type."""
    folder = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(7)
    genes = [f"gene{g}" for g in range(N_GENES)]
    profiles = rng.gamma(0.5, 2.0, size=(N_TYPES, N_GENES))
    profiles[:, :10] = 0.0
    cells = rng.poisson(4.0, size=(N_SPOTS, N_TYPES))
    rates = cells @ profiles + 0.05
    rates[20:40] *= 100.0
    counts = rng.poisson(rates).astype(np.float32)
    counts[:20] = 0
    for spot in range(1, 20):  # 1 to 5 molecules at random genes
        np.add.at(counts[spot], rng.integers(0, N_GENES, size=1 + spot % 5), 1)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"spot{s}" for s in range(N_SPOTS)]),
                       var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = rng.uniform(0, 100, size=(N_SPOTS, 2))
    adata.write_h5ad(folder / "awkward.qc.h5ad")
    pd.DataFrame(profiles.T, index=genes, columns=[f"type{t}" for t in range(N_TYPES)]).to_csv(folder / "sig.csv")
    sample = read_qc_sample(folder / "awkward.qc.h5ad", 4.0)
    return setup_mapping([sample], read_signatures(folder / "sig.csv"), min_shared_genes=10)


@pytest.mark.parametrize("lr", [0.002, 0.05])
def test_mapping_is_finite_on_sparse_spots_unexpressed_genes_and_extreme_libraries(awkward_setup, lr):
    fit = fit_mapping(awkward_setup, 300, lr=lr, seed=0, progress=False)
    assert np.isfinite(fit.loss).all()
    assert torch.isfinite(fit.guide_parameters).all()
    adata = export_mapping(awkward_setup, fit)["awkward"]
    for k in SUMMARIES:
        abundance = adata.obsm[f"{k}_cell_abundance_w_sf"].to_numpy()
        assert np.isfinite(abundance).all() and (abundance >= 0).all(), k
    detection = adata.obs["detection_sensitivity"].to_numpy()
    assert np.isfinite(detection).all() and (detection > 0).all()
    # a deep library is put down (in part, after these few steps) to higher detection, not only to more cells
    assert np.median(detection[20:40]) > 2 * np.median(detection[40:])
