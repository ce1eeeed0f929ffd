"""What every bench script ends with: its result as indented JSON on stdout, and in `out` when one is given."""
from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | None = None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
