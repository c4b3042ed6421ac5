"""The CSV lists the photo commands read (pairs, galleries, probe sets), with errors that name the file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from edge.errors import DataError

#: Limits on a CSV list: file size in bytes, rows, and one field's length in characters.
MAX_CSV_BYTES = 256 * 2**20
MAX_CSV_ROWS = 2_000_000
MAX_CSV_FIELD = 4096


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV file with a header holding every `required` column; DataError naming the file (and
    the line, for a row over the limits)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DataError(f"{path} is a directory, not a CSV file")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise DataError(f"{path} is larger than {MAX_CSV_BYTES // 2**20} MiB")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header is: {','.join(header)})")
            rows: list[dict[str, str]] = []
            for row in reader:
                if len(rows) >= MAX_CSV_ROWS:
                    raise DataError(f"{path} has more than {MAX_CSV_ROWS:,} rows")
                if any(len(v) > MAX_CSV_FIELD for v in row.values() if isinstance(v, str)):
                    raise DataError(f"{path}, line {reader.line_num}: a field is longer than {MAX_CSV_FIELD}"
                                    " characters")
                rows.append(row)
            return rows
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 CSV file") from None
    except csv.Error as err:
        raise DataError(f"{path} is not a well-formed CSV file ({err})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
