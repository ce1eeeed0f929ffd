"""SwiftVideo workbench: distil a many-step video flow model into a 1-4 step one, and measure it."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository this package sits in (a source checkout)
HOME_VARIABLE = "WORKBENCH_HOME"            # where the shipped artifacts are, when not in ROOT (an installed package)


def shipped(relative: str | Path = "") -> Path:
    """A shipped artifact (toy feature networks, toy models, the toy study), e.g. `experiments/toy/fvd`, or with no
    argument the folder they are in: $WORKBENCH_HOME where it is set (a folder holding a copy of the repository's
    `experiments/`, for an installed package), else the repository this package sits in. Read at every call."""
    home = os.environ.get(HOME_VARIABLE)
    return (Path(home).expanduser().resolve() if home else ROOT) / relative
