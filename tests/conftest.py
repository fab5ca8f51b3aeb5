"""Shared test fixtures. The small real datasets ship in tests/data/real (provenance and licences: tests/README.md)."""

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parent / "data" / "real"
MODULES_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "modules.config"
SIMULATED_DATA = Path(__file__).resolve().parent / "data" / "simulated"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the small real Visium samples (visium/) and annotated references (reference/)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def config_blocks():
    """A function: the text of every withName block of conf/modules.config whose selector matches a process name."""
    import re

    config = MODULES_CONFIG.read_text()

    def blocks_of(process: str) -> list[str]:
        blocks = []
        for match in re.finditer(r"withName:\s*'([^']+)'\s*\{", config):
            depth, end = 1, match.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(config[end], 0)
                end += 1
            if re.fullmatch(match.group(1), process):
                blocks.append(config[match.end():end])
        return blocks

    return blocks_of


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train on one CPU thread: small problems gain nothing from more, and when other jobs share the runner's cores,
    OpenMP threads waiting for each other at every operation make a step up to 50 times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_reference_adata():
    """60 cells x 30 genes of negative binomial counts in 3 types (``obs['cell_type']``) and 2 batches (``batch``)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    profiles = rng.gamma(1.0, 4.0, size=(3, 30))
    types = np.repeat(np.arange(3), 20)
    counts = rng.poisson(rng.gamma(5.0, profiles[types] / 5.0)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": [f"type{t}" for t in types], "batch": np.tile(["b1", "b2"], 30)},
                       index=[f"cell{i}" for i in range(60)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(30)]))


@pytest.fixture(scope="module")
def qc_samples(tmp_path_factory) -> Path:
    """A folder with the bundled simulated samples through `tissuemap qc` (sample1.qc.h5ad, sample2.qc.h5ad: 60
    spots each) and signatures.csv, the reference's mean counts per cell type: inputs of quick `tissuemap map`
    runs."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from click.testing import CliRunner

    from tissuemap.cli import main

    root = tmp_path_factory.mktemp("qc_samples")
    for sample in ("sample1", "sample2"):
        result = CliRunner().invoke(main, ["qc", "--sample", sample, "--input",
                                           str(SIMULATED_DATA / "samples" / sample / "outs"), "--outdir", str(root)])
        assert result.exit_code == 0, result.output
    reference = ad.read_h5ad(SIMULATED_DATA / "reference.h5ad")
    counts = pd.DataFrame(np.asarray(reference.X.todense()), columns=reference.var_names)
    counts.groupby(reference.obs["cell_type"].to_numpy()).mean().T.to_csv(root / "signatures.csv")
    return root
