"""The positions of a matrix's barcodes, from Space Ranger's positions file (``spatial/tissue_positions*``).

Standard Visium lists the ~5,000 spots of a capture area; Visium HD's ``tissue_positions.parquet`` lists every bin
of it, ~11 million at 2 µm, most of them outside the filtered matrix. The file is therefore read in Arrow, batch by
batch and only its :data:`POSITIONS_COLUMNS`; each batch keeps the rows of the matrix's barcodes (a hash look-up in
Arrow), and only those rows become numpy arrays, in the matrix's order: no Python object per row of the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from tissuemap.errors import InputError

# Newest layout first: Space Ranger 2+ writes tissue_positions.csv (with header), later versions also .parquet;
# Space Ranger 1.x wrote tissue_positions_list.csv (no header).
POSITIONS_FILES = ("tissue_positions.csv", "tissue_positions.parquet", "tissue_positions_list.csv")
POSITIONS_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
# Rows of a parquet file read at once: ~200 MB of Arrow columns. Each batch hashes the matrix's barcodes anew (~1 s
# for 2.5 million), so a 2 um slide is read in three batches.
PARQUET_BATCH_ROWS = 1 << 22


def find_positions(outs_dir: Path) -> Path:
    """The positions file in ``outs_dir/spatial``; :class:`InputError` when there is none."""
    for name in POSITIONS_FILES:
        if (outs_dir / "spatial" / name).is_file():
            return outs_dir / "spatial" / name
    raise InputError(
        f"{outs_dir / 'spatial'}: no spot positions file ({', '.join(POSITIONS_FILES)}); "
        "copy the whole spatial/ folder of the Space Ranger run next to the matrix"
    )


def read_positions(path: Path, barcodes: pd.Index, matrix_name: str) -> pd.DataFrame:
    """The positions of ``barcodes`` (the matrix ``matrix_name``'s), indexed by them in their order.

    Columns: :data:`POSITIONS_COLUMNS` but ``barcode``, as numbers. Rows of other barcodes are skipped unread into
    Python; so are their checks (a barcode outside the matrix may repeat).

    Raises
    ------
    InputError
        When the file cannot be read, lacks a column, holds a non-number in a numeric column, repeats a barcode of
        the matrix or lacks one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(barcodes.to_numpy(dtype=object), type=pa.string())
    try:
        kept = [batch.filter(pc.is_in(batch.column("barcode"), value_set=wanted)) for batch in _batches(path)]
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as err:
        raise InputError(
            f"{path}: cannot read the spot positions ({err}); give the file written by Space Ranger"
        ) from None
    if not kept:
        raise InputError(f"{path}: no rows; give the positions file written by Space Ranger")
    table = pa.Table.from_batches(kept).combine_chunks()
    found = table.column("barcode")
    if len(pc.unique(found)) < len(found):
        counts = pc.value_counts(found)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0].as_py()
        raise InputError(f"{path}: barcode {repeated!r} appears more than once")
    rows = pc.index_in(wanted, value_set=found)
    if rows.null_count:
        unplaced = rows.is_null().to_numpy(zero_copy_only=False)
        raise InputError(
            f"{path}: {int(unplaced.sum())} of {len(barcodes)} barcodes of {matrix_name} are missing "
            f"(first: {barcodes[unplaced][0]}); use the spatial/ folder of the same Space Ranger run"
        )
    order = rows.to_numpy()
    columns = {}
    for name in POSITIONS_COLUMNS[1:]:
        column = table.column(name)
        values = column.to_numpy() if _is_numeric(column.type) else None
        if values is None or column.null_count or (values.dtype.kind == "f" and np.isnan(values).any()):
            raise InputError(f"{path}: column {name!r} must hold numbers only; give the file written by Space Ranger")
        columns[name] = values[order]
    return pd.DataFrame(columns, index=barcodes)


def _is_numeric(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _batches(path: Path) -> Iterator:
    """The file's :data:`POSITIONS_COLUMNS` as Arrow record batches, barcodes as strings; :class:`InputError` when a
    column is missing."""
    import pyarrow as pa

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        _check_columns(path, source.schema_arrow.names)
        batches = source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(POSITIONS_COLUMNS))
    else:
        batches = pa.Table.from_pandas(_read_csv(path), preserve_index=False).to_batches()
    for batch in batches:
        columns = [batch.column(name) for name in POSITIONS_COLUMNS]
        columns[0] = columns[0].cast(pa.string())
        yield pa.RecordBatch.from_arrays(columns, names=list(POSITIONS_COLUMNS))


def _read_csv(path: Path) -> pd.DataFrame:
    """A positions csv (a few thousand spots) with or without its header row, as :data:`POSITIONS_COLUMNS`."""
    with path.open() as handle:
        has_header = handle.readline().split(",")[0].strip() == "barcode"
    positions = pd.read_csv(path, header=0 if has_header else None, dtype={"barcode" if has_header else 0: str})
    if not has_header:
        if positions.shape[1] != len(POSITIONS_COLUMNS):
            raise InputError(
                f"{path}: {positions.shape[1]} columns, expected {len(POSITIONS_COLUMNS)} "
                f"({', '.join(POSITIONS_COLUMNS)}); give the positions file written by Space Ranger"
            )
        positions.columns = list(POSITIONS_COLUMNS)
    _check_columns(path, positions.columns)
    return positions[list(POSITIONS_COLUMNS)]


def _check_columns(path: Path, present) -> None:
    missing = [column for column in POSITIONS_COLUMNS if column not in set(present)]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; give the positions file written by Space Ranger"
        )
