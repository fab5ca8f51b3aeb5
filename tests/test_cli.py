"""The command line itself: every step is listed, and `--help` stays fast by importing no heavy library."""

import json
import subprocess
import sys

from click.testing import CliRunner

from tissuemap.cli import COMMANDS, main

HEAVY_MODULES = ("torch", "pyro", "scanpy", "anndata", "pandas", "matplotlib", "scipy")


def test_help_lists_every_step():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_help_imports_no_heavy_library():
    # --help must answer in well under a second: it may load every command module, but none of the heavy libraries.
    probe = (
        "import sys, json\n"
        "from tissuemap.cli import main\n"
        "try:\n"
        "    main(['--help'], prog_name='tissuemap')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) == []


def test_every_step_help_answers():
    for name in COMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "--outdir" in result.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(
        main, ["run", "--input", str(tmp_path / "missing.csv"), "--reference", "ref.h5ad", "--labels-key", "x", "--outdir", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'missing.csv'}: samplesheet not found; give the path of a CSV file"]
