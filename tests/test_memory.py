"""The memory plan of a mapping fit (full data when it fits, else the largest batch, else a one-line error before
training) and the export streamed over chunks of spots (the same numbers as in one piece)."""

import numpy as np
import pytest

from tissuemap.errors import InputError
from tissuemap.mapping import (
    expected_expression_layers,
    fit_mapping,
    map_samples,
    mapping_summaries,
    memory,
    read_qc_sample,
    read_signatures,
    setup_mapping,
)
from tissuemap.mapping.memory import (
    SMALLEST_BATCH,
    MappingSize,
    full_data_bytes,
    minibatch_bytes,
    plan_memory,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a Visium HD-like slide: 200,000 bins x 2,000 genes x 20 types, ~100 non-zero counts per bin
HD = MappingSize(n_locations=200_000, n_genes=2000, n_types=20, n_batches=1, n_groups=50, n_nonzero=20_000_000)


def host(n_bytes: float) -> dict[str, int]:
    return {"host": int(n_bytes)}


def test_estimates_grow_with_the_data_and_the_batch():
    double = MappingSize(400_000, 2000, 20, 1, 50, 40_000_000)
    assert full_data_bytes(double, "cpu")["host"] > 1.9 * full_data_bytes(HD, "cpu")["host"]
    assert minibatch_bytes(HD, 1000, "cpu")["host"] < minibatch_bytes(HD, 100_000, "cpu")["host"]
    # the dense counts alone (S x G float32) are a lower bound of the full-data fit
    assert full_data_bytes(HD, "cpu")["host"] > HD.n_locations * HD.n_genes * 4
    gpu = full_data_bytes(HD, "cuda")
    assert set(gpu) == {"host", "device"} and gpu["device"] > HD.n_locations * HD.n_genes * 4


def test_auto_takes_full_data_when_it_fits():
    plan = plan_memory(HD, "cpu", "auto", host(2 * full_data_bytes(HD, "cpu")["host"]))
    assert plan.batch_size is None
    assert plan_memory(HD, "cpu", None, host(2 * full_data_bytes(HD, "cpu")["host"])).batch_size is None


def test_auto_takes_the_largest_batch_that_fits_otherwise(caplog):
    full = full_data_bytes(HD, "cpu")["host"]
    smallest = minibatch_bytes(HD, SMALLEST_BATCH, "cpu")["host"]
    available = host((full + smallest) / 2)
    with caplog.at_level("INFO", logger="tissuemap"):
        plan = plan_memory(HD, "cpu", "auto", available)
    batch = plan.batch_size
    assert SMALLEST_BATCH <= batch <= HD.n_locations
    assert minibatch_bytes(HD, batch, "cpu")["host"] <= available["host"]
    # rounded down to two significant digits, and the next such batch no longer fits (or is all spots)
    step = 10 ** (len(str(batch)) - 2)
    assert batch % step == 0
    assert batch + step > HD.n_locations or minibatch_bytes(HD, batch + step, "cpu")["host"] > available["host"]
    assert f"training on {batch:,} spots per step" in caplog.text


def test_a_fit_that_cannot_work_is_a_one_line_error():
    nothing = host(minibatch_bytes(HD, SMALLEST_BATCH, "cpu")["host"] - 1)
    for batch_size in ("auto", None, 1000):
        with pytest.raises(InputError, match="map fewer samples together") as error:
            plan_memory(HD, "cpu", batch_size, nothing)
        assert "\n" not in str(error.value)
    between = host(minibatch_bytes(HD, 5000, "cpu")["host"])
    with pytest.raises(InputError, match=r"full-data fit .* use --batch-size auto \(batches of up to [\d,]+ spots fit"):
        plan_memory(HD, "cpu", None, between)
    with pytest.raises(InputError, match=r"--batch-size 100000: .* use --batch-size \d+ or auto"):
        plan_memory(HD, "cpu", 100_000, between)
    assert plan_memory(HD, "cpu", 1000, between).batch_size == 1000


def test_on_a_gpu_the_device_memory_is_checked_and_named():
    needed = full_data_bytes(HD, "cuda")
    available = {"host": 10 * needed["host"], "device": needed["device"] - 1}
    with pytest.raises(InputError, match="on this GPU, which has"):
        plan_memory(HD, "cuda", None, available)
    assert plan_memory(HD, "cuda", "auto", available).batch_size is not None


def test_map_ends_before_training_when_the_fit_does_not_fit(qc_samples, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(memory, "available_bytes", lambda device: {"host": 1000})
    monkeypatch.setattr("tissuemap.mapping.step.fit_mapping", no_training)
    with pytest.raises(InputError, match="needs at least .* free") as error:
        map_samples([qc_samples / "sample1.qc.h5ad"], qc_samples / "signatures.csv", n_cells_per_location=8,
                    max_epochs=5, device="cpu", min_shared_genes=10, progress=False)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def small_fit(qc_samples):
    samples = [read_qc_sample(qc_samples / f"{name}.qc.h5ad", 8.0) for name in ("sample1", "sample2")]
    setup = setup_mapping(samples, read_signatures(qc_samples / "signatures.csv"), 10)
    return setup, fit_mapping(setup, 5, 0.01, progress=False)


def test_streamed_summaries_equal_the_unstreamed_ones(small_fit):
    setup, fit = small_fit
    whole = mapping_summaries(setup, fit, chunk_values=64 * setup.data.n_locations * 100)
    streamed = mapping_summaries(setup, fit, chunk_values=64)
    for k, sites in whole.items():
        for site, values in sites.items():
            np.testing.assert_array_equal(streamed[k][site], values, err_msg=f"{k} {site}")


def test_streamed_expected_expression_equals_the_unstreamed_one(small_fit):
    setup, fit = small_fit
    means = mapping_summaries(setup, fit)["means"]
    sample = setup.samples[0]
    counts = sample.adata[:, setup.genes].X
    rows = setup.rows[sample.name]
    scaled = setup.data.signatures.double().numpy() * means["m_g"]
    arguments = (counts, means["w_sf"][rows], scaled, means["s_eg"][0], setup.cell_types)
    whole = expected_expression_layers(*arguments, chunk_spots=counts.shape[0])
    streamed = expected_expression_layers(*arguments, chunk_spots=7)
    for cell_type, layer in whole.items():
        assert (streamed[cell_type] != layer).nnz == 0
        np.testing.assert_array_equal(streamed[cell_type].indptr, layer.indptr)


def test_batch_size_auto_chooses_before_set_up(qc_samples, monkeypatch, caplog):
    paths = [qc_samples / f"{name}.qc.h5ad" for name in ("sample1", "sample2")]
    samples = [read_qc_sample(path, 8.0) for path in paths]
    size = MappingSize.of_inputs(samples, read_signatures(qc_samples / "signatures.csv"), 50)
    options = dict(n_cells_per_location=8, max_epochs=2, device="cpu", min_shared_genes=10, progress=False)
    with caplog.at_level("INFO", logger="tissuemap"):
        full = map_samples(paths, qc_samples / "signatures.csv", batch_size="auto", **options)
    assert full.fit.batch_size is None and "full data fits" in caplog.text
    # memory for a minibatch fit of 100 spots but not for the full-data fit (made huge): auto trains on batches
    monkeypatch.setattr(memory, "SMALLEST_BATCH", 50)
    monkeypatch.setattr(memory, "full_data_bytes", lambda *args, **kwargs: {"host": 1 << 60})
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device: {"host": minibatch_bytes(size, 100, "cpu")["host"]})
    batched = map_samples(paths, qc_samples / "signatures.csv", batch_size="auto", **options)
    assert 50 <= batched.fit.batch_size <= 100


def test_batch_size_option_takes_a_number_or_auto(qc_samples, tmp_path):
    from click.testing import CliRunner

    from tissuemap.cli import main

    result = CliRunner().invoke(main, ["map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), "--signatures",
                                       str(qc_samples / "signatures.csv"), "--batch-size", "many", "--outdir",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "'many' is neither a whole number of spots (at least 1) nor auto" in result.output
