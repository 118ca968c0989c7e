"""What the analyses' plots share: a headless matplotlib and an atomic PNG write (a crash never
leaves a half-written picture under the final name, as for every other flip_dist output)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on workers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure_atomic(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG in memory, then write it in one rename (flip_dist.io_atomic)."""
    from flip_dist.io_atomic import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)
