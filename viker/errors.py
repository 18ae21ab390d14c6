"""The one exception type users see as a one-line message instead of a traceback."""

import math


class VikerError(Exception):
    """A problem with the user's input or setup.

    The command line prints ``error: <message>`` and exits with status 2. Messages name the file,
    config or row at fault and say what is wrong, so that the user can fix it without reading code.
    """


def require(ok: bool, flag: str, value, rule: str) -> None:
    """Refuse a setting out of its range in the words of the command line: ``--beta 0: must be above 0``.
    (A NaN fails every comparison, so it is refused too; so is an infinite number, which no setting takes.)"""
    if isinstance(value, float) and math.isinf(value):
        raise VikerError(f"{flag} {value}: must be a finite number")
    if not ok:
        raise VikerError(f"{flag} {_as_typed(value)}: {rule}")


def _as_typed(value):
    """A number as a user would have typed it: ``--epochs 0`` is read as ``0.0`` and echoed as ``0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def require_given(**settings: str) -> None:
    """Refuse a setting a configuration left at its empty default, as the command line does (``--out`` is
    required): from Python, ``out=""`` wrote the run into the working folder."""
    for name, value in settings.items():
        if not value:
            raise VikerError(f"--{name.replace('_', '-')} is required")
