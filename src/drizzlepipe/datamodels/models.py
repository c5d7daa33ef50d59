"""drizzlepipe's data models, built on :class:`stdatamodels.DataModel` with our own schemas.

- :class:`ImageModel` — one detector chip of one exposure (SCI/DQ/ERR, optional VAR_*).
- :class:`ResampledModel` — a resampled product: ``single`` (one exposure on the common grid),
  ``median`` or the final ``drz`` (SCI, WHT, ERR, CTX).

Files are written atomically (a temporary file in the target directory, then a rename), so an
interrupted save never leaves a truncated product under the final name. FITS files carry the
full tree (including the WCS object) in an ``ASDF`` extension, which makes round trips exact,
and a FITS WCS in the SCI header wherever the WCS is an :class:`astropy.wcs.WCS`, so that any
FITS viewer understands them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS as FitsWCS
from stdatamodels import DataModel, fits_support

from .. import __version__
from ._atomic import atomic_target
from .pixels import load_pixels
from .product_header import add_product_header

__all__ = ["DrizDataModel", "ImageModel", "ResampledModel"]

_SCHEMA_PREFIX = "http://drizzlepipe.org/schemas/"

#: Array attributes of our models.
_ARRAY_NAMES = (
    "data", "dq", "err", "time", "var_rnoise", "var_poisson", "var_flat", "static_mask", "wht",
    "con",
)  # fmt: skip

#: FITS extensions of a product that get the image WCS in their header.
_WCS_EXTENSIONS = ("SCI", "ERR", "DQ", "WHT", "CTX", "VAR_RNOISE", "VAR_POISSON")


class DrizDataModel(DataModel):
    """Base class of drizzlepipe's models: provenance, CRDS protocol and atomic saving."""

    schema_url = _SCHEMA_PREFIX + "core.schema"

    @property
    def crds_observatory(self):
        """Observatory name for stpipe's protocol; drizzlepipe never contacts CRDS."""
        return "drizzlepipe"

    def get_crds_parameters(self):
        """Flat dict of scalar metadata (stpipe's model protocol; not sent anywhere)."""
        return {
            key: value
            for key, value in self.to_flat_dict(include_arrays=False).items()
            if isinstance(value, (str, int, float, bool))
        }

    def on_init(self, init):
        """Set creation date and software provenance; give arrays native byte order."""
        super().on_init(init)
        # FITS stores big-endian arrays; the drizzle C kernels and numpy's fast paths want
        # native order, so convert once here instead of in every algorithm.
        for name in _ARRAY_NAMES:
            array = self._instance.get(name)
            if isinstance(array, np.ndarray) and not array.dtype.isnative:
                self._instance[name] = array.astype(array.dtype.newbyteorder("="))
        if not self.meta.hasattr("date"):
            self.meta.date = Time.now().isot
        if not self.meta.hasattr("software"):
            self.meta.software = {"name": "drizzlepipe", "version": __version__}

    def on_save(self, path=None):
        """Record the final (not the temporary) file name and the write date."""
        target = self.__dict__.get("_atomic_target")
        if self.__dict__.get("_keep_filename"):
            target = self.meta.filename  # a library's temporary copy keeps the input's name
        super().on_save(str(target) if target is not None else path)
        self.meta.date = Time.now().isot
        self.meta.software = {"name": "drizzlepipe", "version": __version__}

    def save(self, path, dir_path=None, *args, **kwargs):
        """Save to ``.fits`` or ``.asdf`` atomically.

        Parameters
        ----------
        path : str, Path or callable
            Output path, or a function of ``meta.filename`` returning it (stpipe's protocol).
        dir_path : str, optional
            Directory that overrides the one in ``path``.
        *args, **kwargs
            Passed to ``astropy.io.fits.HDUList.writeto`` or ``asdf.AsdfFile.write_to``.

        Returns
        -------
        str
            The path written.
        """
        target = Path(path(self.meta.filename) if callable(path) else path)
        if dir_path:
            target = Path(dir_path) / target.name
        suffix = target.suffix.lower()
        if suffix not in (".fits", ".asdf"):
            raise ValueError(f"{target}: unknown file type {suffix!r} (use .fits or .asdf)")
        self._atomic_target = target.name
        try:
            with atomic_target(target, suffix) as tmp_name:
                if suffix == ".fits":
                    kwargs.setdefault("overwrite", True)
                    self.to_fits(tmp_name, *args, **kwargs)
                else:
                    self.to_asdf(tmp_name, *args, **kwargs)
        finally:
            del self._atomic_target
        return str(target)

    def to_fits(self, init, *args, **kwargs):
        """Write FITS with the ASDF tree and, where possible, a FITS WCS in each image HDU."""
        self.on_save(init)
        hdulist = fits_support.to_fits(self._instance, self._schema)
        self._add_fits_wcs(hdulist)
        self._add_headers(hdulist)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Card is too long")
            hdulist.writeto(init, *args, **kwargs)

    def _add_headers(self, hdulist):
        """Hook for keywords and extensions beyond the schema's (none here)."""

    def _add_fits_wcs(self, hdulist):
        wcs = self.meta.wcs if self.meta.hasattr("wcs") else None
        if not isinstance(wcs, FitsWCS):
            return
        with warnings.catch_warnings():
            # Lookup-table distortions cannot go into a header; the ASDF tree keeps them.
            warnings.simplefilter("ignore")
            header = wcs.to_header(relax=True)
        for name in _WCS_EXTENSIONS:
            if name in hdulist:
                hdu = hdulist[name]
                if not isinstance(hdu, fits.ImageHDU) or hdu.data is None:
                    continue
                if hdu.data.ndim == 2:
                    hdu.header.update(header)
                elif hdu.data.ndim == 3:
                    # a context cube (more than 32 inputs): the celestial axes of each plane
                    hdu.header["WCSAXES"] = 2
                    hdu.header.update(header)


class ImageModel(DrizDataModel):
    """One detector chip: ``data`` (float32), ``dq`` (uint32), ``err`` (float32), optional
    ``var_rnoise``/``var_poisson``, and metadata (WCS, exposure, detector, background, group).

    Units are stated in ``meta.units`` (``counts``, ``countrate`` or ``surface_brightness``)
    and ``meta.detector.in_electrons`` (False: DN, convert with ``meta.detector.gain``).
    """

    schema_url = _SCHEMA_PREFIX + "image.schema"

    # A chip of a library may read its input arrays from its file when they are used
    # (drizzlepipe.datamodels.pixels): the first access of one of them reads that one.

    def __getattr__(self, attr):
        source = self.__dict__.get("_pixel_source")
        if source is not None and attr in source.names and attr not in self._instance:
            source.load(self, (attr,))
        return super().__getattr__(attr)

    @property
    def shape(self):
        """Shape of ``data`` (without reading pixels that are not in memory)."""
        source = self.__dict__.get("_pixel_source")
        if source is not None and "data" not in self._instance:
            return source.shape
        return super().shape

    def copy(self, memo=None):
        """A copy holding every array (pixels read from the file first)."""
        load_pixels(self)
        return super().copy(memo=memo)

    def on_save(self, path=None):
        """Read pixels kept in the file before the model is written."""
        load_pixels(self)
        super().on_save(path)


class ResampledModel(DrizDataModel):
    """A resampled product on an output grid: ``data``, ``wht``, optional ``err`` and ``con``.

    ``meta.product_type`` is ``single``, ``median`` or ``drz``; ``meta.resample.inputs`` lists
    the input chips in context-bit order (bit ``i % 32`` of plane ``i // 32`` of ``con``).
    """

    schema_url = _SCHEMA_PREFIX + "resampled.schema"

    def _add_headers(self, hdulist):
        """Input header cards, photometry in SCI, ``D%03d*`` keywords and the ``HDRTAB`` table
        (:mod:`drizzlepipe.datamodels.product_header`)."""
        add_product_header(self, hdulist)
