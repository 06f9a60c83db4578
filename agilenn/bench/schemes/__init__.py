"""The schemes ``agilenn bench`` compares, one family per class, registered by name.

A family is a :class:`Family` subclass decorated with
:func:`register_family` in any module of this package. Importing the package
imports every module in it, so dropping a module in registers its families:
nothing else needs to change. ``base`` holds what they share.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    FAMILIES,
    STAGES,
    Family,
    Outcome,
    Scheme,
    SchemeContext,
    family_names,
    register_family,
    select_families,
)

__all__ = ["FAMILIES", "STAGES", "Family", "Outcome", "Scheme", "SchemeContext", "discover_families",
           "family_names", "register_family", "select_families"]


def discover_families() -> None:
    """Import every module on the package's path; each registers its families as it loads."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


discover_families()
