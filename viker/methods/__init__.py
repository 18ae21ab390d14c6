"""Training objectives, registered by name. A method is one small module saying what is particular
to it; the shared math lives in :mod:`viker.methods.losses`."""

from __future__ import annotations

from typing import Callable

METHODS: dict[str, Callable] = {}


def register(name: str):
    def add(cls):
        METHODS[name] = cls
        cls.name = name
        return cls

    return add


def get_method(name: str):
    from viker.errors import VikerError
    from viker.methods import cagul, finetune, ga, graddiff, idkpo, klmin, npo, viker  # noqa: F401  (registration)

    if name not in METHODS:
        raise VikerError(f"unknown method '{name}'; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
