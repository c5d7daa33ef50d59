"""``drizzlepipe quicklook``: a PNG of a product, its weight map and the cosmic rays of exposures.

Panels: the product's SCI image (asinh stretch between the 0.5 and 99.7 percentiles), its WHT
map, and for every chip of every ``_crf`` file given its image with the pixels flagged as cosmic
rays (``crbit``: 4096 for HST, OUTLIER + DO_NOT_USE for JWST) in red and the pixels carrying
any other DQ flag (bad columns, hot pixels, saturation...; also when the cosmic-ray test flagged
them too) in blue.

Usage: ``drizzlepipe quicklook PRODUCT [--crf FILE ...] [-o PNG]``. Needs matplotlib
(``pip install 'drizzlepipe[quicklook]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from .datamodels import dqflags
from .exceptions import DrizzlepipeInputError

__all__ = ["MAX_CHIP_PANELS", "add_arguments", "dq_layers", "quicklook", "run", "stretch"]

#: Chips of ``_crf`` files shown at most (the first ones, in file and extension order).
MAX_CHIP_PANELS = 8
_COLUMNS = 4


def stretch(image, low=0.5, high=99.7):
    """asinh stretch between two percentiles of the finite pixels, mapped to [0, 1] (NaN: 0)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape)
    vmin, vmax = np.percentile(finite, [low, high])
    scale = max(float(vmax - vmin), 1e-12)
    scaled = np.clip(np.nan_to_num((image - vmin) / scale, nan=0.0), 0, 1)
    return np.arcsinh(10 * scaled) / np.arcsinh(10)


def dq_layers(dq, crbit):
    """``(cosmic, other)`` boolean maps: pixels flagged with ``crbit`` and nothing else, and
    pixels with any other DQ flag (a bad column that the cosmic-ray test also flagged is shown
    as what it was first, a bad pixel)."""
    dq = np.asarray(dq).astype(np.uint32)
    crbit = np.uint32(crbit)
    other = (dq & ~crbit) != 0
    cosmic = ((dq & crbit) == crbit) & ~other
    return cosmic, other


def _product_arrays(path):
    try:
        with fits.open(path) as hdulist:
            for name in ("SCI", "WHT"):
                if name not in hdulist:
                    raise DrizzlepipeInputError(path, f"not a drizzled product (no {name})")
            return hdulist["SCI"].data.astype(np.float32), hdulist["WHT"].data.astype(np.float32)
    except OSError as error:
        raise DrizzlepipeInputError(path, f"unreadable ({error})") from None


def _file_chips(path, hdulist):
    """``(title, image, dq, crbit)`` of every chip of one ``_crf`` file: its SCI extensions
    with their DQ, or (a plain FITS copy) its first image with the ``DQ`` extension."""
    telescope = str(hdulist[0].header.get("TELESCOP", "")).strip().upper()
    crbit = dqflags.default_crbit("jwst" if telescope == "JWST" else "hst")
    images = [hdu for hdu in hdulist if hdu.name == "SCI" and hdu.is_image and hdu.data is not None]
    if not images:  # plain FITS: the image in the primary or the first image extension
        images = [hdu for hdu in hdulist if hdu.is_image and hdu.header.get("NAXIS") == 2][:1]
    if not images:
        raise DrizzlepipeInputError(path, "no image to show")
    chips = []
    for hdu in images:
        version = hdu.header.get("EXTVER", 1)
        key = ("DQ", version) if ("DQ", version) in hdulist else "DQ"
        dq = hdulist[key].data if key in hdulist else np.zeros(hdu.data.shape, np.uint32)
        name = f"SCI,{version}" if hdu.name == "SCI" else (hdu.name or "PRIMARY")
        chips.append((f"{Path(path).name} {name}", hdu.data.astype(np.float32), dq, crbit))
    return chips


def _chips(paths):
    """``(title, image, dq, crbit)`` for the chips of the ``_crf`` files, at most
    :data:`MAX_CHIP_PANELS`."""
    chips = []
    for path in paths:
        try:
            with fits.open(path) as hdulist:
                chips.extend(_file_chips(path, hdulist))
        except OSError as error:
            raise DrizzlepipeInputError(path, f"unreadable ({error})") from None
    return chips[:MAX_CHIP_PANELS]


def quicklook(product, crf=(), png=None):
    """Write the quicklook PNG of ``product`` (and of the chips of the ``crf`` files).

    Parameters
    ----------
    product : str or Path
        A drizzled product (``_drz``, ``_single`` or ``_med``: SCI and WHT extensions).
    crf : sequence of str or Path
        ``_crf`` copies of exposures: their chips are shown with the cosmic rays in red and
        other DQ flags in blue (at most :data:`MAX_CHIP_PANELS` chips).
    png : str or Path, optional
        Output file (default: the product's name with ``.png``).

    Returns
    -------
    Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    product = Path(product)
    png = Path(png) if png is not None else product.with_suffix(".png")
    science, weight = _product_arrays(product)
    chips = _chips(crf)
    rows = 1 + -(-len(chips) // _COLUMNS)
    figure = plt.figure(figsize=(4.2 * _COLUMNS, 4.4 * rows))
    grid = figure.add_gridspec(rows, _COLUMNS)
    axis = figure.add_subplot(grid[0, 0:2])
    axis.imshow(stretch(science), origin="lower", cmap="gray", interpolation="nearest")
    axis.set_title(f"{product.name} SCI (asinh stretch)")
    axis = figure.add_subplot(grid[0, 2:4])
    shown = axis.imshow(weight, origin="lower", cmap="viridis", interpolation="nearest")
    axis.set_title(f"{product.name} WHT")
    colorbar = figure.colorbar(shown, ax=axis, fraction=0.046)
    colorbar.set_label("weight (s for exposure-time weights)")
    red, blue = ListedColormap(["red"]), ListedColormap(["deepskyblue"])
    for number, (title, image, dq, crbit) in enumerate(chips):
        axis = figure.add_subplot(grid[1 + number // _COLUMNS, number % _COLUMNS])
        cosmic, other = dq_layers(dq, crbit)
        axis.imshow(stretch(image), origin="lower", cmap="gray", interpolation="nearest")
        axis.imshow(np.ma.masked_where(~other, other), origin="lower", cmap=blue,
                    interpolation="nearest", alpha=0.8)  # fmt: skip
        axis.imshow(np.ma.masked_where(~cosmic, cosmic), origin="lower", cmap=red,
                    interpolation="nearest", alpha=0.9)  # fmt: skip
        axis.set_title(f"{title}\ncosmic rays (red, {int(cosmic.sum())} px), "
                       f"other DQ (blue)", fontsize=9)  # fmt: skip
    for axis in figure.axes:
        if axis is not colorbar.ax:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(png, dpi=90)
    plt.close(figure)
    return png


def add_arguments(parser):
    """Arguments of ``drizzlepipe quicklook``."""
    parser.add_argument("product", type=Path, help="a drizzled product (_drz, _single, _med)")
    parser.add_argument(
        "--crf", nargs="+", type=Path, default=(), metavar="FILE",
        help=f"_crf files whose chips to show with their cosmic rays (at most {MAX_CHIP_PANELS})",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="PNG to write (default: PRODUCT with .png)")  # fmt: skip


def run(args):
    """Run ``drizzlepipe quicklook``; returns the exit code."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "quicklook needs matplotlib: pip install 'drizzlepipe[quicklook]'"
        ) from None
    png = quicklook(args.product, args.crf, args.output)
    print(f"wrote {png}")
    return 0
