"""Our progress bars: one per step of a stage that takes a while (training, answers, the judge, …)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class Bar(tqdm):
    """A tqdm bar as wide as the terminal that draws its finished state once.

    tqdm draws a bar when its last step lands on 100% and again when it closes (then with the overall rate). On
    a terminal the carriage return between them overwrites the first, but in a log file, a pipe or CI's output,
    and on a terminal where the line wraps, the finished bar shows twice. Here the last step leaves the drawing
    to ``close``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None and not self.disable and self.total is not None and self.n >= self.total:
            return True  # close() draws it (it sets disable first)
        return super().display(msg, pos)
