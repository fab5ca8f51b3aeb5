"""`--early-stopping`: training ends once the loss has levelled off, the step is recorded, and both engines pass
the options on; without it every step of --max-epochs runs."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tissuemap.cli import main
from tissuemap.early_stopping import EarlyStopping
from tissuemap.errors import InputError
from tissuemap.runner import RunOptions, plan_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_rule_compares_the_means_of_two_windows():
    rule = EarlyStopping(tolerance=0.01, window=100)
    falling = 1000.0 * np.exp(-np.arange(400) / 100)  # falls by ~63 % per window: far from levelled off
    assert not rule.should_stop(falling)
    assert rule.relative_improvement(falling[:150]) is None  # fewer than two windows: no judgement yet
    level = np.concatenate([falling, np.full(200, falling[-1])])
    assert rule.should_stop(level)
    # noise around a level does not count as improvement, nor does it keep training going
    noisy = 500 + np.random.default_rng(0).normal(0, 5, 200)
    assert abs(rule.relative_improvement(noisy)) < 0.01 and rule.should_stop(noisy)


@pytest.mark.parametrize(("tolerance", "window"), [(-1, 100), (float("nan"), 100), (0.01, 0)])
def test_bad_settings_are_one_line_errors(tolerance, window):
    with pytest.raises(InputError, match="--early-stopping-"):
        EarlyStopping(tolerance, window)


def map_history(qc_samples, tmp_path, *options) -> dict:
    outdir = tmp_path / "map"
    result = CliRunner().invoke(main, [
        "map", "--spatial", str(qc_samples / "sample1.qc.h5ad"), "--signatures", str(qc_samples / "signatures.csv"),
        "--n-cells-per-location", "8", "--max-epochs", "600", "--lr", "0.02", "--min-shared-genes", "10",
        "--device", "cpu", *options, "--outdir", str(outdir),
    ])
    assert result.exit_code == 0, result.output
    return json.loads((outdir / "sample1" / "sample1.mapping_history.json").read_text())


def test_map_stops_early_and_records_the_step(qc_samples, tmp_path):
    # a tolerance no fit meets can only stop at the first judgement: two windows of 100 steps
    history = map_history(qc_samples, tmp_path, "--early-stopping", "--early-stopping-window", "100",
                          "--early-stopping-tolerance", "1e9")
    assert history["steps"] == 200 and len(history["loss"]) == 200
    assert history["early_stopping"] == {"tolerance": 1e9, "window": 100, "max_steps": 600, "stopped_at": 200}
    # a tolerance of 0 stops only if the loss got worse: here it keeps improving, every step runs
    history = map_history(qc_samples, tmp_path / "zero", "--early-stopping", "--early-stopping-window", "100",
                          "--early-stopping-tolerance", "0")
    assert history["steps"] == 600 and history["early_stopping"]["stopped_at"] is None


def test_without_the_option_every_step_runs(qc_samples, tmp_path):
    history = map_history(qc_samples, tmp_path)
    assert history["steps"] == 600 and len(history["loss"]) == 600 and history["early_stopping"] is None


def test_run_passes_the_options_to_the_map_step(tmp_path):
    options = RunOptions(signatures=tmp_path / "signatures.csv", n_cells_per_location=8, early_stopping=True,
                         early_stopping_tolerance=0.001, early_stopping_window=500)
    (tmp_path / "signatures.csv").write_text("gene,A\ng1,1\n")
    (map_step,) = [step for step in plan_steps("tests/data/simulated/samplesheet.csv", options, tmp_path)
                   if step.command == ("map",)][:1]
    args = list(map_step.args)
    assert "--early-stopping" in args
    assert args[args.index("--early-stopping-tolerance") + 1] == "0.001"
    assert args[args.index("--early-stopping-window") + 1] == "500"
    off = [step for step in plan_steps("tests/data/simulated/samplesheet.csv",
                                       RunOptions(signatures=tmp_path / "signatures.csv", n_cells_per_location=8),
                                       tmp_path) if step.command == ("map",)][0]
    assert "--early-stopping" not in off.args
