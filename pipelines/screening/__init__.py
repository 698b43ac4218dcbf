"""Virtual screening: score a molecule library with a registered model on
Ray Data and rank hits (see run_screen.screen_library).

The names below load on first use: Ray tasks that need only one module of
this package (the structural alerts) must not import torch and Ray Data
through this file."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.screening.run_screen import ScreeningConfig, ScreeningResult, screen_library
    from pipelines.screening.scoring import Resources

_EXPORTS = {"ScreeningConfig": "run_screen", "ScreeningResult": "run_screen",
            "screen_library": "run_screen", "Resources": "scoring"}

__all__ = ["Resources", "ScreeningConfig", "ScreeningResult", "screen_library"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
