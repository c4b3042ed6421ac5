"""What the device's checks share: `edge doctor` and `edge run --check` (`edge.device.doctor`) and the state
directory's (`edge.device.state_checks`). A check is a function of the config (`ConfigCheck`) that returns one line
of detail or raises: `Absent` when a device file does not exist (yet; `need`), anything else for a failure. Its
outcome is OK, FAIL or ABSENT."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

#: Outcomes of one check: passed, failed, or a device file that is absent.
OK, FAIL, ABSENT = "ok", "fail", "absent"

#: A check of a loaded config: one line of detail (or one per problem), or it raises.
ConfigCheck = Callable[[Any], str]


class Absent(Exception):
    """A file the device needs does not exist (yet)."""


def need(*paths: Path | None) -> list[Path]:
    """The given paths (None skipped) if all exist, else `Absent` naming the missing ones."""
    present = [Path(p) for p in paths if p is not None]
    missing = [p for p in present if not p.exists()]
    if missing:
        raise Absent(", ".join(str(p) for p in missing) + (" is" if len(missing) == 1 else " are") + " absent")
    return present
