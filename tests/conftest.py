"""Shared test fixtures. The small real datasets ship in tests/data/real (provenance and licences: tests/README.md)."""

import html
import re
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parent / "data" / "real"
MODULES_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "modules.config"
SIMULATED_DATA = Path(__file__).resolve().parent / "data" / "simulated"
# the cell types of the lymph node reference, 30 cells each, in the order of its categories
LYMPH_NODE_TYPES = ("B", "B_Plasma", "DC", "Endo", "ILC", "Macrophages", "Monocytes", "NK", "T_CD4", "T_CD8", "VSMC")
# cell-type names that HTML and matplotlib must show as they are: the signatures of make_sample_folder carry them
RENAMED_TYPES = {"B": "B <naive>", "T_CD4": 'T & "CD4"', "Macrophages": "$mac$"}


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the small real Visium samples (visium/) and annotated references (reference/)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def lymph_node_reference(real_data) -> Path:
    """The lymph node reference: 330 cells, 30 of each type in ``obs['cell_type']`` (:func:`lymph_node_types`)."""
    return real_data / "reference" / "lymph_node_330cells.h5ad"


@pytest.fixture(scope="session")
def islets_reference(real_data) -> Path:
    """The pancreatic islets reference: 500 cells in 7 types (``obs['cell_type']``), donors in ``obs['donor_id']``."""
    return real_data / "reference" / "islets_500cells.h5ad"


@pytest.fixture(scope="session")
def lymph_node_types() -> list[str]:
    """The cell types of the lymph node reference, in its order."""
    return list(LYMPH_NODE_TYPES)


@pytest.fixture(scope="session")
def config_blocks():
    """A function: the text of every withName block of conf/modules.config whose selector matches a process name."""
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


def _small_reference_adata():
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


@pytest.fixture(scope="session")
def make_small_reference():
    """A function: a new AnnData of 60 cells x 30 genes of negative binomial counts (the same at every call) in 3
    types (``obs['cell_type']``) and 2 batches (``batch``)."""
    return _small_reference_adata


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


# --- the report steps' inputs and pages ------------------------------------------------------------------------------

def _invoke(*args):
    from click.testing import CliRunner

    from tissuemap.cli import main

    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def invoke():
    """A function: run ``tissuemap ARGS...`` (each made a string), assert it succeeded and return click's result."""
    return _invoke


@pytest.fixture(scope="session")
def make_reference_folder(lymph_node_reference):
    """A function: fill ``folder`` with the outputs of filter-genes and signatures (--method mean) on the lymph node
    reference, and return it."""
    def make(folder: Path) -> Path:
        _invoke("filter-genes", "--reference", lymph_node_reference, "--labels-key", "cell_type", "--outdir", folder)
        _invoke("signatures", "--reference", folder / "reference.filtered.h5ad", "--labels-key", "cell_type",
                "--method", "mean", "--outdir", folder)
        return folder

    return make


@pytest.fixture(scope="session")
def renamed_cell_types() -> list[str]:
    """The cell types of the signatures that :func:`make_sample_folder` maps with: the lymph node's, some renamed
    to names that HTML and matplotlib must escape."""
    return [RENAMED_TYPES.get(name, name) for name in LYMPH_NODE_TYPES]


@pytest.fixture(scope="session")
def make_sample_folder(real_data):
    """A function: fill ``folder`` with the outputs of qc and map (``max_epochs`` steps) for breast_crop as sample
    ``sample``, mapped with the signatures of ``reference_folder`` (:func:`make_reference_folder`) under the names of
    :func:`renamed_cell_types`, and return it."""
    import pandas as pd

    def make(reference_folder: Path, folder: Path, sample: str, max_epochs: int) -> Path:
        signatures = pd.read_csv(reference_folder / "signatures.csv", index_col=0).rename(columns=RENAMED_TYPES)
        signatures.to_csv(folder.parent / f"{folder.name}_signatures.csv")
        _invoke("qc", "--sample", sample, "--input", real_data / "visium" / "breast_crop", "--outdir", folder)
        mapped = folder.parent / f"{folder.name}_mapped"
        _invoke("map", "--spatial", folder / f"{sample}.qc.h5ad", "--signatures",
                folder.parent / f"{folder.name}_signatures.csv", "--n-cells-per-location", 30, "--max-epochs",
                max_epochs, "--outdir", mapped)
        for path in (mapped / sample).iterdir():  # the map step writes into mapped/SAMPLE/
            path.rename(folder / path.name)
        return folder

    return make


def _image_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def _assert_self_contained(page: str) -> None:
    assert _image_sources(page)
    assert all(source.startswith("data:image/png;base64,") for source in _image_sources(page))
    assert len(re.findall(r"<img\b", page)) == len(_image_sources(page))
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"(https?:|//)", page)
    assert "@import" not in page and "url(" not in page


@pytest.fixture(scope="session")
def image_sources():
    """A function: the ``src`` of every image of an HTML page."""
    return _image_sources


@pytest.fixture(scope="session")
def assert_self_contained():
    """A function that asserts an HTML page is self-contained: every image inline, no script and nothing fetched
    from elsewhere."""
    return _assert_self_contained


@pytest.fixture(scope="session")
def cell_texts():
    """A function: the text of every table cell of an HTML page (``tag``: ``td`` unless given), unescaped."""
    def texts(page: str, tag: str = "td") -> set[str]:
        return {html.unescape(text) for text in re.findall(rf"<{tag}>(.*?)</{tag}>", page)}

    return texts
