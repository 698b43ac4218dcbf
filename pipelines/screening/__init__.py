"""Virtual screening: score a molecule library with a registered model on
Ray Data and rank hits (see runner.screen_library)."""
from pipelines.screening.runner import ScreeningConfig, ScreeningResult, screen_library
from pipelines.screening.scoring import Resources

__all__ = ["Resources", "ScreeningConfig", "ScreeningResult", "screen_library"]
