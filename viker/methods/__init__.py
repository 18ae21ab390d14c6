"""Training objectives, registered by name. A method is one small module saying what is particular
to it; the shared math lives in :mod:`viker.methods.losses`."""

from __future__ import annotations

from typing import Callable

METHODS: dict[str, Callable] = {}


def register(name: str, title: str):
    """Register a method under ``name`` (what commands and results files use); ``title`` is how tables
    and plots print it, as the papers do (``"klmin"`` -> ``"KL-Min"``)."""

    def add(cls):
        from dataclasses import is_dataclass

        from viker.errors import VikerError

        if not isinstance(name, str) or not name.strip() or name != name.strip():  # what --method and folders name
            raise VikerError(f"method {name!r}: a method's name is a word that --method can give, not blank or padded")
        if isinstance(getattr(cls, "streams", ()), str):  # ("forget") is the string "forget", not a stream
            raise VikerError(f"method '{name}': {cls.__name__}.streams is the string {cls.streams!r}; give a tuple "
                             f"of stream names, ({cls.streams!r},)")
        if not is_dataclass(cls):  # its fields are the settings commands take, configs record and --resume compares
            raise VikerError(f"method '{name}': {cls.__name__} must be a dataclass (@dataclass, written below "
                             "@register), its fields the method's settings")
        if not callable(getattr(cls, "loss", None)):  # found only at the first step, once the run's folder is made
            raise VikerError(f"method '{name}': {cls.__name__} has no loss(self, model, batches) method, the objective "
                             "each step minimises")
        if not cls.__module__.startswith(__name__ + "."):  # one of a user's: the built-in ones first, to compare
            _registered()
        taken = METHODS.get(name)
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise VikerError(f"method '{name}' is already {taken.__module__}.{taken.__qualname__}; register "
                             f"{cls.__name__} under another name")
        METHODS[name] = cls
        cls.name, cls.title = name, title
        return cls

    return add


def _registered() -> None:
    from viker.methods import cagul, finetune, ga, graddiff, idkpo, klmin, npo, viker  # noqa: F401  (registration)


def title(name: str) -> str:
    """How tables print method ``name``; a name that is not a method (``vanilla``) as it is."""
    _registered()
    return METHODS[name].title if name in METHODS else name


def unlearning_methods() -> list[str]:
    """The names ``viker unlearn --method`` takes: every method but the vanilla finetune's objective."""
    _registered()
    return sorted(name for name in METHODS if name != "finetune")


def get_method(name: str):
    from viker.errors import VikerError

    _registered()
    if name not in METHODS:
        raise VikerError(f"unknown method '{name}'; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
