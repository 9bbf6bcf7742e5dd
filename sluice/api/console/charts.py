"""Small charts drawn on the server as SVG numbers (no script, no style attributes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WIDTH = 240
HEIGHT = 40


def sparkline(values: Sequence[int], width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    """Bars for ``values`` (oldest first) scaled to the largest: ``{bars: [(x, y, w, h)]}``."""
    top = max(values, default=0)
    step = width / max(1, len(values))
    drawn = []
    for index, value in enumerate(values):
        if value <= 0 or top <= 0:
            continue
        h = max(1.0, height * value / top)
        drawn.append(
            (round(index * step, 1), round(height - h, 1), round(step * 0.8, 1), round(h, 1))
        )
    return {"width": width, "height": height, "bars": drawn, "max": top, "total": sum(values)}
