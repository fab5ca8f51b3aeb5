"""`--threads`: the default follows the CPUs this process may use, and `tissuemap run` trains with the count given,
whatever the process's torch setting was before and whatever the QC step did to it."""

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from tissuemap import qc, threads
from tissuemap.cli import main
from tissuemap.log import counted, logger
from tissuemap.mapping import step as mapping_step
from tissuemap.signatures import fit as signatures_fit


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_or_an_ancestor_applies(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    write(tmp_path / "fs" / "cpu.max", "max 100000\n")
    write(tmp_path / "fs" / "job" / "cpu.max", "300000 100000\n")
    write(tmp_path / "fs" / "job" / "step" / "cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "fs", proc) == 3.0
    write(tmp_path / "fs" / "job" / "step" / "cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "fs", proc) == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:cpu,cpuacct:/\n3:memory:/x\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "fs", proc) is None
    write(tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "fs", proc) == 2.0


def test_default_is_the_cpus_available_and_never_more(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)  # a container given 2.5 CPUs
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.available_cpus() == 2
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's lower setting is kept
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert threads.default_threads() == 2


def test_counts_are_printed_in_the_right_number():
    assert [counted(1, "thread"), counted(2, "thread"), counted(1, "batch"), counted(3, "batch"),
            counted(2, "epoch"), counted(2, "minibatch")] == ["1 thread", "2 threads", "1 batch", "3 batches",
                                                              "2 epochs", "2 minibatches"]


@pytest.fixture
def restore_threads():
    """Put back torch's thread count and the thread variables that the run under test sets for its process."""
    before = torch.get_num_threads()
    variables = {name: os.environ.get(name) for name in threads.THREAD_VARIABLES}
    yield
    torch.set_num_threads(before)
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_run_trains_both_steps_with_the_threads_given(real_data, tmp_path, caplog, restore_threads, monkeypatch):
    simulated = tmp_path / "simulated"
    shutil.copytree(real_data.parent / "simulated", simulated)

    def changing_threads(module, name):
        # what scanpy's QC metrics do where numba starts its OpenMP pool in this process: torch's count changes.
        # Done in the QC step and, to be sure each training step applies its count right before training, inside
        # both training steps after they started.
        function = getattr(module, name)

        def changed(*args, **kwargs):
            value = function(*args, **kwargs)
            torch.set_num_threads(3)
            return value

        monkeypatch.setattr(module, name, changed)

    changing_threads(qc, "_spot_metrics")
    changing_threads(signatures_fit, "cell_groups")
    changing_threads(mapping_step, "read_qc_sample")
    results = tmp_path / "results"
    logger.addHandler(caplog.handler)  # the tissuemap logger does not propagate to the root logger caplog watches
    try:
        with caplog.at_level("INFO", logger="tissuemap"):
            result = CliRunner().invoke(main, [
                "run", "--input", str(simulated / "samplesheet.csv"), "--reference", str(simulated / "reference.h5ad"),
                "--labels-key", "cell_type", "--n-cells-per-location", "8", "--regression-epochs", "2",
                "--mapping-epochs", "3", "--min-shared-genes", "50", "--mapping-mode", "joint", "--device", "cpu",
                "--threads", "1", "--outdir", str(results)])
    finally:
        logger.removeHandler(caplog.handler)
    assert result.exit_code == 0, result.output
    records = json.loads((results / "pipeline_info" / "steps.json").read_text())
    steps = {step["key"]: step["command"] for step in records}
    assert " --threads 1 " in steps["signatures"] and " --threads 1 " in steps["map/sample1+sample2"]
    # torch's count when each training loop started, as the histories record it
    assert json.loads((results / "reference" / "reference.signatures_history.json").read_text())["threads"] == 1
    for sample in ("sample1", "sample2"):
        history = json.loads((results / sample / f"{sample}.mapping_history.json").read_text())
        assert history["threads"] == 1 and history["device"] == "cpu (1 thread)"
    assert caplog.text.count("device: cpu (1 thread)") == 2
