"""Virtual screening: score a molecule library with a registered model on
Ray Data and rank hits (see run_screen.screen_library)."""
from pipelines.screening.run_screen import ScreeningConfig, ScreeningResult, screen_library
from pipelines.screening.scoring import Resources

__all__ = ["Resources", "ScreeningConfig", "ScreeningResult", "screen_library"]
