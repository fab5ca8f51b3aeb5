"""Samplesheet reading and validation against ``assets/schema_input.json``, the schema nf-schema also reads.

The schema is JSON Schema 2020-12 plus nf-schema's own keywords; the Python side implements those keywords with
``jsonschema``'s extension mechanism so both engines apply one set of rules:

- ``exists`` and the formats ``file-path`` / ``directory-path``: the path must exist and be a file / a folder;
- ``uniqueEntries``: the listed columns must be unique across rows;
- ``errorMessage``: the message shown instead of the validator's own;
- ``meta``: which columns become meta-map keys in Nextflow (no effect here).

As in nf-schema, empty cells count as absent and numbers are cast by the schema's ``type``. Relative paths are
resolved from the samplesheet's folder.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from tissuemap.errors import InputError
from tissuemap.log import counted, logger

PATH_COLUMNS = ("spaceranger_dir", "h5ad")
# every column holding a path: a relative one is resolved from the samplesheet's folder
RELATIVE_PATH_COLUMNS = (*PATH_COLUMNS, "cell_counts")
# Bytes read to tell a binary file given as the samplesheet (h5ad, h5, png) from a CSV.
BINARY_CHECK_BYTES = 8192


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The samplesheet JSON schema shipped with the package (a link to ``assets/schema_input.json``)."""
    return json.loads(files("tissuemap").joinpath("assets", "schema_input.json").read_text())


# Space Ranger's Visium HD bin sizes (um), as the schema lists them for both engines.
BIN_SIZES = tuple(load_schema()["items"]["properties"]["bin_size"]["enum"])


@dataclass(frozen=True)
class Sample:
    """One validated samplesheet row."""

    sample: str
    path: Path
    kind: str  # "spaceranger" or "h5ad"
    n_cells_per_location: float | None = None
    detection_alpha: float | None = None
    slide: str | None = None
    cell_counts: Path | None = None  # barcode,n_cells CSV: cells per spot counted on the image
    bin_size: int | None = None  # Visium HD: which bins of binned_outputs/ to read (um)

    def qc_options(self) -> tuple[str, ...]:
        """This row's options of `tissuemap qc` (the Nextflow QC module passes the same from its meta map)."""
        return ("--bin-size", str(self.bin_size)) if self.bin_size is not None else ()


def validate_name(value: str, column: str = "sample", where: str = "--sample") -> str:
    """Return ``value`` if it obeys the schema's rule for ``column`` (``sample`` or ``slide``), else raise.

    Sample and slide names become folder and file names and appear in HTML, hence the strict character set.
    """
    rule = load_schema()["items"]["properties"][column]
    if not re.fullmatch(rule["pattern"], value) or len(value) > rule.get("maxLength", len(value)):
        raise InputError(f"{where}: {value!r} is not a valid {column} name. {rule['errorMessage']}")
    return value


def _validator_class(check_paths: bool = True):
    from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

    def exists(validator, wanted, instance, schema):
        if check_paths and wanted and isinstance(instance, str) and not Path(instance).exists():
            yield ValidationError(f"{instance} does not exist")

    def unique_entries(validator, columns, instance, schema):
        seen: dict[tuple, int] = {}
        for index, row in enumerate(instance):
            if not isinstance(row, dict):
                continue
            key = tuple(row.get(column) for column in columns)
            if key in seen:
                error = ValidationError(
                    f"duplicate {', '.join(columns)} {key[0] if len(key) == 1 else key!r} (also in row {seen[key] + 1}); "
                    "each row needs a unique value"
                )
                error.path.extend([index, columns[0]])
                yield error
            else:
                seen[key] = index

    checker = FormatChecker()
    checker.checks("file-path")(lambda value: not check_paths or not Path(value).exists() or Path(value).is_file())
    checker.checks("directory-path")(lambda value: not check_paths or not Path(value).exists() or Path(value).is_dir())
    extended = validators.extend(Draft202012Validator, {"exists": exists, "uniqueEntries": unique_entries})
    return extended, checker


def _cast(value: str, rule: dict):
    """Cast a CSV cell to the schema's type; leave it a string when it does not parse (validation then says so)."""
    try:
        if rule.get("type") == "integer":
            return int(value)
        if rule.get("type") == "number":
            return float(value)
    except ValueError:
        return value
    return value


def _not_a_samplesheet(path: Path) -> InputError:
    return InputError(
        f"{path}: not a text file (an h5ad, h5 or image?); --input expects the samplesheet, a CSV file with a header "
        "row such as 'sample,spaceranger_dir' and one row per sample"
    )


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise InputError(f"{path}: samplesheet not found; give the path of a CSV file")
    with path.open("rb") as handle:  # a look at the start first: an h5ad given by mistake may be gigabytes
        head = handle.read(BINARY_CHECK_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not merely a character cut by the end of the head
            raise _not_a_samplesheet(path) from None
    if b"\0" in head:
        raise _not_a_samplesheet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_a_samplesheet(path) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise InputError(f"{path}: the samplesheet is empty; it needs a header row such as 'sample,spaceranger_dir'")
        header = [cell.strip() for cell in header]
        rows = []
        for line_number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                raise InputError(
                    f"{path}: line {line_number} has {len(cells)} fields but the header has {len(header)}; "
                    "check for unquoted commas"
                )
            rows.append({column: cell.strip() for column, cell in zip(header, cells) if cell.strip()})
    return header, rows


def _check_header(path: Path, header: list[str], properties: dict) -> None:
    if "sample" not in header:
        raise InputError(f"{path}: missing column 'sample'; the header needs 'sample' and 'spaceranger_dir' or 'h5ad'")
    if not any(column in header for column in PATH_COLUMNS):
        raise InputError(f"{path}: missing column 'spaceranger_dir' or 'h5ad'; add one of them to the header")
    duplicated = sorted({column for column in header if header.count(column) > 1})
    if duplicated:
        raise InputError(f"{path}: column {duplicated[0]!r} appears more than once in the header")
    unknown = [column for column in header if column not in properties]
    if unknown:
        logger.warning("%s: ignoring unknown column(s) %s", path, ", ".join(unknown))


def _describe(error, rows: list[dict], path: Path, properties: dict) -> str:
    """One line naming the row, the column and the problem."""
    location = list(error.absolute_path)
    if not location:
        return f"{path}: {error.message}"
    index = location[0]
    row_label = f"row {index + 1}"
    if isinstance(rows[index].get("sample"), str):
        row_label += f" (sample {rows[index]['sample']!r})"
    if error.validator == "required":
        column = re.search(r"'([^']+)'", error.message).group(1)
        return f"{path}: {row_label}, column {column!r}: missing value; every row needs one"
    if error.validator == "oneOf":
        given = [column for column in PATH_COLUMNS if column in rows[index]]
        problem = "both are given" if given else "neither is given"
        return f"{path}: {row_label}, columns 'spaceranger_dir'/'h5ad': give exactly one of them ({problem})"
    column = location[1] if len(location) > 1 else None
    if error.validator in ("uniqueEntries", "exists"):
        return f"{path}: {row_label}, column {column!r}: {error.message}"
    message = properties.get(column, {}).get("errorMessage", error.message)
    return f"{path}: {row_label}, column {column!r}: {message} (got {error.instance!r})"


def read_samplesheet(path: str | Path, check_paths: bool = True) -> list[Sample]:
    """Read and validate a samplesheet; return one :class:`Sample` per row, paths made absolute.

    ``check_paths=False`` skips whether the paths exist (and are a file or a folder): for `tissuemap plan` in a
    Nextflow task, where the samples' folders are not mounted and nf-schema has checked them already.

    Raises :class:`InputError` with a one-line message naming the row and column of the first problem found.
    """
    path = Path(path)
    schema = load_schema()
    properties = schema["items"]["properties"]
    header, rows = _read_rows(path)
    _check_header(path, header, properties)
    if not rows:
        raise InputError(f"{path}: the samplesheet has a header but no sample rows")
    for row in rows:
        for column, value in row.items():
            if column in RELATIVE_PATH_COLUMNS:
                row[column] = str((path.parent / value).resolve()) if not Path(value).is_absolute() else value
            elif column in properties:
                row[column] = _cast(value, properties[column])
    validator_class, checker = _validator_class(check_paths)
    validator = validator_class(schema, format_checker=checker)
    errors = sorted(validator.iter_errors(rows), key=lambda e: (list(e.absolute_path)[:1], e.validator != "required"))
    if errors:
        raise InputError(_describe(errors[0], rows, path, properties))
    samples = []
    for row in rows:
        kind = "spaceranger" if "spaceranger_dir" in row else "h5ad"
        samples.append(
            Sample(
                sample=row["sample"],
                path=Path(row["spaceranger_dir" if kind == "spaceranger" else "h5ad"]),
                kind=kind,
                n_cells_per_location=row.get("n_cells_per_location"),
                detection_alpha=row.get("detection_alpha"),
                slide=row.get("slide"),
                cell_counts=Path(row["cell_counts"]) if "cell_counts" in row else None,
                bin_size=row.get("bin_size"),
            )
        )
    logger.info("%s: %s: %s", path, counted(len(samples), "sample"), ", ".join(s.sample for s in samples))
    return samples
