"""SwiftVideo workbench: distil a many-step video flow model into a 1-4 step one, and measure it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (configs in ROOT / "experiments")
