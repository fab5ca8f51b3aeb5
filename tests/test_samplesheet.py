"""Samplesheet validation: the rules users meet before anything runs, one line per mistake."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tissuemap.errors import InputError
from tissuemap.samplesheet import read_samplesheet, validate_name


@pytest.fixture
def sheet_dir(tmp_path: Path) -> Path:
    (tmp_path / "s1" / "outs").mkdir(parents=True)
    (tmp_path / "s2" / "outs").mkdir(parents=True)
    (tmp_path / "counts.h5ad").write_bytes(b"")
    return tmp_path


def write_sheet(folder: Path, text: str) -> Path:
    path = folder / "samplesheet.csv"
    path.write_text(text)
    return path


def test_valid_sheet_resolves_relative_paths_and_casts_numbers(sheet_dir):
    path = write_sheet(
        sheet_dir,
        "sample,spaceranger_dir,h5ad,n_cells_per_location,detection_alpha,slide\n"
        "A,s1/outs,,30,200,slide1\n"
        "B,,counts.h5ad,,,slide1\n",
    )
    first, second = read_samplesheet(path)
    assert first.sample == "A" and first.kind == "spaceranger"
    assert first.path == (sheet_dir / "s1" / "outs").resolve()
    assert first.n_cells_per_location == 30.0 and first.detection_alpha == 200.0 and first.slide == "slide1"
    assert second.kind == "h5ad" and second.path == (sheet_dir / "counts.h5ad").resolve()
    assert second.n_cells_per_location is None and second.detection_alpha is None


def test_sheet_is_read_from_any_working_directory(sheet_dir, tmp_path_factory, monkeypatch):
    path = write_sheet(sheet_dir, "sample,spaceranger_dir\nA,s1/outs\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert read_samplesheet(path)[0].path == (sheet_dir / "s1" / "outs").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("spaceranger_dir\ns1/outs\n", "missing column 'sample'"),
        ("sample,slide\nA,x\n", "missing column 'spaceranger_dir' or 'h5ad'"),
        ("sample,spaceranger_dir\n", "no sample rows"),
        ("sample,spaceranger_dir,h5ad\nA,s1/outs,counts.h5ad\n", "row 1 (sample 'A'), columns 'spaceranger_dir'/'h5ad': give exactly one of them (both"),
        ("sample,spaceranger_dir,h5ad\nA,,\n", "row 1 (sample 'A'), columns 'spaceranger_dir'/'h5ad': give exactly one of them (neither"),
        ("sample,spaceranger_dir\nA,s1/outs\nB,s2/outs\nA,s2/outs\n", "row 3 (sample 'A'), column 'sample': duplicate sample"),
        ("sample,spaceranger_dir\n../x,s1/outs\n", "row 1 (sample '../x'), column 'sample'"),
        ("sample,spaceranger_dir\n<b>A</b>,s1/outs\n", "column 'sample'"),
        ("sample,spaceranger_dir\nmy sample,s1/outs\n", "column 'sample'"),
        ("sample,spaceranger_dir\n..,s1/outs\n", "column 'sample'"),
        ("sample,spaceranger_dir\n,s1/outs\n", "row 1, column 'sample': missing value"),
        ("sample,spaceranger_dir\nA,missing/outs\n", "row 1 (sample 'A'), column 'spaceranger_dir': "),
        ("sample,h5ad\nA,missing.h5ad\n", "column 'h5ad': "),
        ("sample,spaceranger_dir\nA,counts.h5ad\n", "column 'spaceranger_dir': spaceranger_dir must be an existing"),
        ("sample,h5ad\nA,s1\n", "column 'h5ad': h5ad must be an existing .h5ad file"),
        ("sample,spaceranger_dir,n_cells_per_location\nA,s1/outs,many\n", "column 'n_cells_per_location'"),
        ("sample,spaceranger_dir,detection_alpha\nA,s1/outs,0\n", "column 'detection_alpha'"),
        ("sample,spaceranger_dir,sample\nA,s1/outs,B\n", "appears more than once"),
        ("sample,spaceranger_dir\nA,s1/outs,extra\n", "line 2 has 3 fields"),
    ],
)
def test_invalid_sheet_names_row_column_and_problem(sheet_dir, text, expected):
    path = write_sheet(sheet_dir, text)
    with pytest.raises(InputError) as caught:
        read_samplesheet(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_samplesheet_file(tmp_path):
    with pytest.raises(InputError, match="samplesheet not found"):
        read_samplesheet(tmp_path / "nope.csv")


@pytest.mark.parametrize("name", ["A", "sample_1", "S-2.rep3", "x.y"])
def test_safe_sample_names_pass(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a b", "<script>", "a&b", "x" * 200])
def test_unsafe_sample_names_fail(name):
    with pytest.raises(InputError, match="not a valid sample name"):
        validate_name(name)


def test_slide_names_follow_their_own_rule():
    assert validate_name("slide.1", column="slide", where="--slide") == "slide.1"
    with pytest.raises(InputError, match="--slide: 'a/b' is not a valid slide name"):
        validate_name("a/b", column="slide", where="--slide")


# Property-based: whatever the sample names in a sheet, the validator accepts exactly the safe, unique ones and
# never crashes with anything but a one-line InputError.

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
cell_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n,\"'"), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(cell_text, min_size=1, max_size=4))
def test_validator_accepts_exactly_safe_unique_names(sheet_dir, names):
    rows = "".join(f"{name},s1/outs\n" for name in names)
    path = write_sheet(sheet_dir, "sample,spaceranger_dir\n" + rows)
    stripped = [name.strip() for name in names]
    rows_kept = [name for name in stripped if name]  # blank lines are skipped, as in any CSV reader
    expected_ok = (
        len(rows_kept) == len(stripped)
        and all(set(name) <= SAFE and set(name) != {"."} and len(name) <= 128 for name in stripped)
        and len(set(stripped)) == len(stripped)
    )
    try:
        samples = read_samplesheet(path)
    except InputError as err:
        assert not expected_ok, str(err)
        assert "\n" not in str(err) and str(err).startswith(str(path))
    else:
        assert expected_ok
        assert [s.sample for s in samples] == stripped
