"""What every figure of the project shares: each algorithm's line style (its catalogue colour and line style), log axes with legible ticks (decades, or 1-2-5 steps in
narrower views, every one labelled in plain numbers or as powers of ten, minor ticks never labelled), compact
weight-step axes, and saving (PNG with a palette of at most 256 colours via Pillow, about a third of the size
of the RGBA PNG matplotlib writes and indistinguishable from it: the analysis page embeds them, and the
Snakemake report embeds the page as a data URL, which Chromium caps at 2 MB; SVG as matplotlib writes it)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from PIL import Image  # noqa: E402

from onepass import catalog  # noqa: E402

DPI = 110
PALETTE = 256  # colours of a PNG


def style(algorithm: str) -> dict:
    """Matplotlib keywords of an algorithm's lines: its catalogue colour and line style, its name as gid (so
    that tests can check both against the catalogue)."""
    return {"color": catalog.colour(algorithm), "linestyle": catalog.linestyle(algorithm), "gid": algorithm}


class LogTicks(ticker.LogLocator):
    """Major ticks of a log axis: decades where three or more are in view, else 1-2-5 steps within each
    decade where two or more of those are, else a few evenly spaced ticks (a view narrower than 2.5x):
    always at least two ticks, all labelled, and minor ticks never are."""

    def __init__(self):
        super().__init__(base=10.0, subs=(1.0,))

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((float(vmin), float(vmax)))
        if not (lo > 0 and np.isfinite(hi)):
            return super().tick_values(vmin, vmax)
        for subs, enough in (((1.0,), 3), ((1.0, 2.0, 5.0), 2)):
            self.set_params(subs=subs)
            ticks = super().tick_values(lo, hi)
            if np.count_nonzero((ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))) >= enough:
                return ticks
        return ticker.MaxNLocator(4).tick_values(lo, hi)


class LogLabels(ticker.Formatter):
    """Labels of :class:`LogTicks`: plain numbers where every tick in view lies in [10^-4, 10^5), else
    powers of ten (one style per axis)."""

    def format_ticks(self, values):
        lo, hi = sorted(self.axis.get_view_interval()) if self.axis is not None else (-np.inf, np.inf)
        shown = [v for v in values if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        plain = all(1e-4 <= v < 1e5 for v in shown)
        return [self.label(v, plain) for v in values]

    def __call__(self, x, pos=None):
        return self.label(x, 1e-4 <= x < 1e5)

    @staticmethod
    def label(x: float, plain: bool) -> str:
        if not (x > 0 and np.isfinite(x)):
            return ""
        if plain:
            return f"{x:.6g}"
        exponent = math.floor(math.log10(x) + 1e-9)
        mantissa = x / 10 ** exponent
        if abs(mantissa - 1) < 1e-6:
            return f"$10^{{{exponent}}}$"
        return f"${mantissa:.3g}\\times10^{{{exponent}}}$"


def log_axis(ax, which: str) -> None:
    """Put axis ``which`` ('x' or 'y') of ``ax`` on a log scale with :class:`LogTicks` and :class:`LogLabels`."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogTicks())
    axis.set_major_formatter(LogLabels())
    axis.set_minor_locator(ticker.LogLocator(base=10.0, subs=(2.0, 5.0)))
    axis.set_minor_formatter(ticker.NullFormatter())


def steps_axis(axis) -> None:
    """A linear weight-step axis with at most six ticks labelled compactly (0, 2k, 120k)."""
    axis.set_major_locator(ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], integer=True))
    axis.set_major_formatter(ticker.EngFormatter(sep=""))


def save_png(fig, path) -> None:
    """``fig`` as a PNG with a palette of at most PALETTE colours (no dithering: flat colours stay flat)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(PALETTE, method=Image.Quantize.FASTOCTREE,
                                                dither=Image.Dither.NONE)
    palette.save(path, format="PNG", optimize=True)


def save(fig, out_paths) -> None:
    """Save ``fig`` to every path in ``out_paths`` (format from suffix: palette PNG or vector), then close it."""
    for path in out_paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if str(path).lower().endswith(".png"):
            save_png(fig, path)
        else:
            fig.savefig(path, dpi=DPI)
    plt.close(fig)
