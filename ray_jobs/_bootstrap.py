"""Make `flip_dist` importable when a job runs from a `ray job submit --working-dir .` copy of
the repo whose environment has the dependencies but not the package itself."""
from __future__ import annotations

import sys
from pathlib import Path

root = str(Path(__file__).resolve().parent.parent)
if root not in sys.path:
    sys.path.insert(0, root)
