"""Interrupted training: `map` and `signatures` save checkpoints, also at once on SIGTERM or SIGINT (then exiting
with 75), and `--resume` continues from the last one with the numbers of an uninterrupted run (bitwise on a CPU); an
interruption leaves no output file but the checkpoint."""

import os
import signal
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from tissuemap.checkpoint import Checkpointing
from tissuemap.cli import main
from tissuemap.errors import InputError
from tissuemap.interruption import EXIT_INTERRUPTED
from tissuemap.mapping import fit_mapping, read_qc_sample, read_signatures, setup_mapping
from tissuemap.signatures import estimate_signatures

N_GENES, N_TYPES = 40, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mapping_inputs(tmp_path_factory):
    """A QC'd-like sample (30 spots x 40 genes of Poisson counts from 3 profiles) and its signatures CSV."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    genes = [f"gene{g}" for g in range(N_GENES)]
    profiles = rng.gamma(1.0, 1.0, size=(N_TYPES, N_GENES))
    cells = rng.poisson(3.0, size=(30, N_TYPES))
    counts = rng.poisson(cells @ profiles).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"spot{s}" for s in range(30)]),
                       var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = rng.uniform(0, 100, size=(30, 2))
    adata.write_h5ad(folder / "tiny.qc.h5ad")
    pd.DataFrame(profiles.T, index=genes, columns=[f"type{t}" for t in range(N_TYPES)]).to_csv(folder / "sig.csv")
    return folder / "tiny.qc.h5ad", folder / "sig.csv"


def interrupt_after_saves(monkeypatch, n_saves: int) -> None:
    """Make the ``n_saves``-th checkpoint save raise KeyboardInterrupt once written (a Ctrl-C right after it)."""
    save, calls = Checkpointing.save, []

    def save_then_interrupt(self, state, key):
        save(self, state, key)
        calls.append(state["step"])
        if len(calls) == n_saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointing, "save", save_then_interrupt)


# minibatch training (--batch-size) checkpoints every so many epochs: 30 spots in batches of 7, the last of 2
MODES = {"full data": (), "minibatch": ("--batch-size", "7")}


@pytest.mark.parametrize("batch_size", [None, 7], ids=MODES)
def test_resumed_mapping_fit_equals_uninterrupted(mapping_inputs, tmp_path, monkeypatch, batch_size):
    spatial, signatures = mapping_inputs
    setup = setup_mapping([read_qc_sample(spatial, 5.0)], read_signatures(signatures), min_shared_genes=10,
                          sparse_counts=batch_size is not None)
    uninterrupted = fit_mapping(setup, 30, lr=0.02, seed=3, progress=False, batch_size=batch_size)
    checkpoint = Checkpointing(tmp_path / ".tiny.map.ckpt.pt", every=10, resume=True)
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            fit_mapping(setup, 30, lr=0.02, seed=3, progress=False, checkpoint=checkpoint, batch_size=batch_size)
    assert torch.load(checkpoint.path, weights_only=False)["step"] == 20
    resumed = fit_mapping(setup, 30, lr=0.02, seed=3, progress=False, checkpoint=checkpoint, batch_size=batch_size)
    assert torch.equal(resumed.guide_parameters, uninterrupted.guide_parameters)
    np.testing.assert_array_equal(resumed.loss, uninterrupted.loss)
    with pytest.raises(InputError, match="checkpoint of other inputs or settings"):
        fit_mapping(setup, 30, lr=0.02, seed=4, progress=False, checkpoint=checkpoint, batch_size=batch_size)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint = Checkpointing(tmp_path / ".x.ckpt.pt", every=1, resume=True)
    checkpoint.save({"step": 1}, "key")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 2}, "key")
    assert [path.name for path in tmp_path.iterdir()] == [".x.ckpt.pt"]
    assert checkpoint.load("key")["step"] == 1


def map_command(spatial, signatures, outdir, *extra):
    return ["map", "--spatial", str(spatial), "--signatures", str(signatures), "--n-cells-per-location", "5",
            "--max-epochs", "20", "--lr", "0.02", "--device", "cpu", "--min-shared-genes", "10",
            "--outdir", str(outdir), *extra]


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES)
def test_interrupted_map_command_resumes_to_the_same_outputs(mapping_inputs, tmp_path, monkeypatch, mode):
    spatial, signatures = mapping_inputs
    runner = CliRunner()
    result = runner.invoke(main, map_command(spatial, signatures, tmp_path / "whole", *mode))
    assert result.exit_code == 0, result.output
    outdir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, 1)
        result = runner.invoke(main, map_command(spatial, signatures, outdir, "--checkpoint-every", "10", *mode))
    assert result.exit_code != 0
    assert [path.name for path in outdir.iterdir()] == [".tiny.map.ckpt.pt"]  # no half-written output
    result = runner.invoke(main, map_command(spatial, signatures, outdir, "--checkpoint-every", "10", "--resume",
                                             *mode))
    assert result.exit_code == 0, result.output
    assert not (outdir / ".tiny.map.ckpt.pt").exists()
    for table in ("tiny.cell_abundance_q05.csv", "tiny.cell_abundance_mean.csv"):
        assert (outdir / "tiny" / table).read_bytes() == (tmp_path / "whole" / "tiny" / table).read_bytes()
    result = runner.invoke(main, map_command(spatial, signatures, outdir, "--resume"))
    assert result.exit_code == 0, result.output  # nothing to resume from: a fresh start


@pytest.fixture
def small_reference(make_small_reference):
    """60 cells x 30 genes in 3 types and 2 batches."""
    return make_small_reference()


def fit_signatures(adata, seed=0, checkpoint=None):
    record = estimate_signatures(adata, "cell_type", batch_key="batch", max_epochs=6, batch_size=25, lr=0.01,
                                 device="cpu", seed=seed, checkpoint=checkpoint)
    return record["elbo"], adata.varm["means_per_cluster_mu_fg"].to_numpy()


def test_resumed_signature_fit_equals_uninterrupted(small_reference, tmp_path, monkeypatch):
    elbo, means = fit_signatures(small_reference.copy())
    checkpoint = Checkpointing(tmp_path / ".reference.signatures.ckpt.pt", every=2, resume=True)
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            fit_signatures(small_reference.copy(), checkpoint=checkpoint)
    assert torch.load(checkpoint.path, weights_only=False)["step"] == 4
    resumed_elbo, resumed_means = fit_signatures(small_reference.copy(), checkpoint=checkpoint)
    assert resumed_elbo == elbo
    np.testing.assert_array_equal(resumed_means, means)
    with pytest.raises(InputError, match="checkpoint of other inputs or settings"):
        fit_signatures(small_reference.copy(), seed=1, checkpoint=checkpoint)


def test_signatures_command_resumes_and_removes_its_checkpoint(small_reference, tmp_path, monkeypatch):
    path = tmp_path / "reference.h5ad"
    small_reference.write_h5ad(path)
    command = ["signatures", "--reference", str(path), "--labels-key", "cell_type", "--batch-key", "batch",
               "--max-epochs", "4", "--batch-size", "30", "--device", "cpu", "--checkpoint-every", "2",
               "--outdir", str(tmp_path / "out")]
    runner = CliRunner()
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, 1)
        assert runner.invoke(main, command).exit_code != 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".reference.signatures.ckpt.pt"]
    result = runner.invoke(main, [*command, "--resume"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / ".reference.signatures.ckpt.pt").exists()
    assert (tmp_path / "out" / "signatures.csv").is_file()


def run_and_signal(command, checkpoint, signum):
    """Run ``tissuemap COMMAND`` in a subprocess, send it ``signum`` once its first checkpoint is on disk (training is
    under way) and return its exit code and log."""
    process = subprocess.Popen([sys.executable, "-m", "tissuemap", *command], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def assert_stopped_with_a_checkpoint(returncode, stderr, signum, checkpoint, total, unit):
    """Exit 75, no traceback, and a log line naming the signal, the step reached and the checkpoint; returns the
    step."""
    assert returncode == EXIT_INTERRUPTED, stderr[-2000:]
    assert "Traceback" not in stderr
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step < total
    assert f"{signum.name}: training stopped after {step} of {total} {unit}; its state is saved in {checkpoint}" \
        in stderr
    return step


@pytest.mark.parametrize(("signum", "mode"), [(signal.SIGTERM, "full data"), (signal.SIGINT, "full data"),
                                               (signal.SIGTERM, "minibatch")],
                         ids=lambda value: getattr(value, "name", value))
def test_a_signal_stops_map_with_a_checkpoint_and_resume_gives_the_uninterrupted_outputs(mapping_inputs, tmp_path,
                                                                                        signum, mode):
    """SIGTERM (a cluster's walltime, a preempted instance) or SIGINT (Ctrl-C) in the middle of training: the state
    is saved at once into --checkpoint-dir, the command exits with 75 and writes no output; --resume then gives
    the outputs of an uninterrupted run, bit for bit."""
    spatial, signatures = mapping_inputs
    outdir, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    command = map_command(spatial, signatures, outdir, "--checkpoint-every", "20", "--checkpoint-dir", str(checkpoints),
                          *MODES[mode])
    command[command.index("--max-epochs") + 1] = "1000"  # far more than run before the signal
    checkpoint = checkpoints / ".tiny.map.ckpt.pt"
    returncode, stderr = run_and_signal(command, checkpoint, signum)
    assert_stopped_with_a_checkpoint(returncode, stderr, signum, checkpoint, 1000,
                                     "steps" if mode == "full data" else "epochs")
    assert list(outdir.iterdir()) == []

    runner = CliRunner()
    result = runner.invoke(main, [*command, "--resume"])
    assert result.exit_code == 0, result.output
    assert not checkpoint.exists()
    whole = tmp_path / "whole"
    uninterrupted = map_command(spatial, signatures, whole, "--max-epochs", "1000", *MODES[mode])
    assert runner.invoke(main, uninterrupted).exit_code == 0
    for table in ("tiny.cell_abundance_q05.csv", "tiny.cell_abundance_mean.csv"):
        assert (outdir / "tiny" / table).read_bytes() == (whole / "tiny" / table).read_bytes()
    resumed, expected = (ad.read_h5ad(folder / "tiny" / "tiny.abundance.h5ad") for folder in (outdir, whole))
    for key in expected.obsm:
        np.testing.assert_array_equal(resumed.obsm[key], expected.obsm[key])


def test_sigterm_stops_signatures_with_a_checkpoint_and_resume_gives_the_uninterrupted_outputs(small_reference,
                                                                                              tmp_path):
    path = tmp_path / "reference.h5ad"
    small_reference.write_h5ad(path)
    checkpoints = tmp_path / "checkpoints"
    command = ["signatures", "--reference", str(path), "--labels-key", "cell_type", "--batch-key", "batch",
               "--max-epochs", "100", "--batch-size", "25", "--lr", "0.01", "--device", "cpu"]
    interrupted = [*command, "--checkpoint-every", "2", "--checkpoint-dir", str(checkpoints),
                   "--outdir", str(tmp_path / "out")]
    checkpoint = checkpoints / ".reference.signatures.ckpt.pt"
    returncode, stderr = run_and_signal(interrupted, checkpoint, signal.SIGTERM)
    assert_stopped_with_a_checkpoint(returncode, stderr, signal.SIGTERM, checkpoint, 100, "epochs")
    assert list((tmp_path / "out").iterdir()) == []

    runner = CliRunner()
    result = runner.invoke(main, [*interrupted, "--resume"])
    assert result.exit_code == 0, result.output
    assert not checkpoint.exists()
    assert runner.invoke(main, [*command, "--outdir", str(tmp_path / "whole")]).exit_code == 0
    assert (tmp_path / "out" / "signatures.csv").read_bytes() == (tmp_path / "whole" / "signatures.csv").read_bytes()
    resumed, expected = (ad.read_h5ad(tmp_path / folder / "reference.signatures.h5ad") for folder in ("out", "whole"))
    for key in expected.varm:
        np.testing.assert_array_equal(resumed.varm[key], expected.varm[key])
