"""One self-contained HTML page: figures embedded as base64 PNG (and also written beside it as PNG files), tables,
notes; no script, no style sheet or font from the network, so it opens from the disk anywhere."""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from detkit.atomic import atomic_write, atomic_write_text

_STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1200px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; margin-top: 32px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 12px 0; } img.figure { max-width: 100%; border: 1px solid #eee; }
p.empty { color: #a33; background: #fff4f4; border: 1px solid #f0caca; padding: 8px; }
p.note { color: #555; font-size: 13px; }
"""


class Page:
    """Builds a page for `out_dir` and writes its PNG figures into `figures_dir` (default out_dir); both are
    created. `save()` writes the page atomically."""

    def __init__(self, out_dir: str | os.PathLike, title: str, figures_dir: str | os.PathLike | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.figures_dir = Path(figures_dir) if figures_dir is not None else self.out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.figures: list[Path] = []

    def heading(self, text: str, anchor: str) -> None:
        self.parts.append(f'<h2 id="{html.escape(anchor)}">{html.escape(text)}</h2>')

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def empty(self, text: str) -> None:
        """A clearly marked empty section: what is missing and why."""
        self.parts.append(f'<p class="empty">Nothing to show: {html.escape(text)}</p>')

    def figure(self, fig: Figure | None, name: str, caption: str, empty_reason: str) -> None:
        """Embed a figure and write it as <name>.png; a None figure becomes an empty() line with `empty_reason`."""
        if fig is None:
            self.empty(empty_reason)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        self.image(buffer.getvalue(), name, caption)

    def image(self, png: bytes, name: str, caption: str) -> None:
        """Embed an already encoded PNG (a drawn image) and write it as <name>.png."""
        path = self.figures_dir / f"{name}.png"
        atomic_write(path, lambda f: f.write(png))
        self.figures.append(path)
        encoded = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<figure><img class="figure" alt="{html.escape(caption)}" '
                          f'src="data:image/png;base64,{encoded}"><figcaption class="note">{html.escape(caption)}'
                          "</figcaption></figure>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A table; floats are shown with 1 decimal (callers pass percent), nan as "-"."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def save(self, name: str = "report.html") -> Path:
        page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + html.escape(self.title) +
                f"</title><style>{_STYLE}</style></head><body>" + "\n".join(self.parts) + "</body></html>")
        path = self.out_dir / name
        atomic_write_text(path, page)
        return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}"
    return str(value)


