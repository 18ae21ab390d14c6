"""The one exception type users see as a one-line message instead of a traceback."""

import math
import os


class VikerError(Exception):
    """A problem with the user's input or setup.

    The command line prints ``error: <message>`` and exits with status 2. Messages name the file,
    config or row at fault and say what is wrong, so that the user can fix it without reading code.
    """


def check_types(config) -> None:
    """Refuse a field of a settings dataclass whose value is of another kind than its annotation says, from Python
    (``TrainConfig(epochs="2")``, ``UnlearnConfig(train={...})``): one line naming the field, not a traceback from
    the first comparison or attribute read deep inside. Only plain kinds are checked: classes, and unions of them
    with None; a float field takes an int, a str field a path."""
    import dataclasses

    check_values(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def check_values(cls: type, values: dict, where: str = "") -> None:
    """:func:`check_types` for ``values`` of ``cls``'s fields before it is made (a method's settings, whose own checks
    would compare a string with a number first); ``where`` opens the message. A class whose annotations cannot be
    read (a name defined later) is left to its own checks."""
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  (a user's class: unresolved names, or annotations typing cannot read)
        return
    for name, value in values.items():
        kinds = _kinds(hints.get(name))
        if kinds is not None and not isinstance(value, kinds):
            names = {"None" if k is type(None) else k.__name__ for k in kinds if k is not os.PathLike}
            wanted = " or ".join(sorted(names, key=lambda name: (name == "None", name)))
            raise VikerError(f"{where}{cls.__name__}.{name}: {value!r} is {_a(type(value).__name__)}, not {wanted}")


def check_config(config, kind: type, function: str) -> None:
    """Refuse a ``config`` of another kind than ``function`` takes (a dict where a settings dataclass is asked)."""
    if not isinstance(config, kind):
        raise VikerError(f"{function} takes {_a(kind.__name__)}, not {_a(type(config).__name__)}")


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'AEIOUaeiou' else 'a'} {name}"


def _kinds(hint) -> tuple[type, ...] | None:
    """The classes a value annotated ``hint`` may be an instance of; None where that is not checked."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_kinds(arg) for arg in typing.get_args(hint)]
        return None if None in parts else tuple(k for part in parts for k in part)
    if origin is not None:  # dict[str, ...], list[str]: the container alone
        return (origin,) if isinstance(origin, type) else None
    if hint is float:
        return (float, int)
    if hint is str:
        return (str, os.PathLike)
    return (hint,) if isinstance(hint, type) else None


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
