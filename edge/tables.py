"""The CSV lists the photo commands read (pairs, galleries, probe sets), with errors that name the file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from edge.errors import DataError


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV file with a header holding every `required` column; DataError naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header is: {','.join(header)})")
            return list(reader)
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 CSV file") from None
