"""StaticMaskStep: one bad-pixel mask per detector chip position, combining all exposures.

A pixel is bad when it lies below ``mode - sigma x rms`` of its chip in any exposure
(AstroDrizzle's static mask). The mask is stored in every chip's ``static_mask`` array, which
the sky and drizzle steps apply (BlotCR does not), and saved as ``<product>_staticmask.fits``
with ``save_results``.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy.io import fits

from ..algorithms.staticmask import build_static_masks
from ..datamodels.conversions import chip_label
from ..datamodels.writers import write_fits_atomic
from .base import DrizStep

__all__ = ["StaticMaskStep"]

log = logging.getLogger(__name__)


def chip_position(info):
    """Key of a chip position, from the chip's
    :class:`~drizzlepipe.datamodels.library.ChipInfo`: instrument, detector, chip number and
    shape."""
    return (str(info.instrument or ""), str(info.detector or ""), int(info.chip or 1), info.shape)


class StaticMaskStep(DrizStep):
    """Build the static bad-pixel masks and attach them to every chip (``static_mask``)."""

    class_alias = "static_mask"

    spec = """
    sigma = float(default=4.0, min=0.0)  # Clip level in sigma below the mode
    skip = boolean(default=None)  # Skip this step (None: the preset's, else False)
    """
    builtin_defaults = {"skip": False}

    def process(self, input_data):
        """Build the static masks and attach them to the chips.

        Parameters
        ----------
        input_data : ModelLibrary, str, list
            The chips (anything :class:`~drizzlepipe.datamodels.ModelLibrary` accepts).

        Returns
        -------
        ModelLibrary
            The chips, each with ``static_mask`` (uint8, 1 = bad) of its chip position.
        """
        library = self.prepare_library(input_data)
        with library:
            # each chip's data is read in the thread that measures it; the chips' infos first,
            # before any thread borrows a chip
            infos = [library.chip_info(index) for index in range(len(library))]
            positions = [chip_position(info) for info in infos]

            def own_data(model):  # valid after the chip is shelved
                return library.kept(model.data)

            chips = [
                (positions[index], library.chip_array(index, own_data, info.shape), None)
                for index, info in enumerate(infos)
            ]
            with self.statistics_map(library) as map_:
                result = build_static_masks(chips, static_sig=self.sigma, map_=map_)
            # one read-only array per chip position, shared by its chips (in memory, E - 1
            # fewer copies of P bytes per position)
            as_bytes = {key: mask.astype(np.uint8) for key, mask in result.masks.items()}
            for array in as_bytes.values():
                array.flags.writeable = False
            for index in range(len(library)):
                model = library.borrow(index)
                mask = result.masks[positions[index]]
                model.static_mask = as_bytes[positions[index]]
                self.record_step_status(model)
                threshold = result.thresholds[index]
                log.debug(
                    "%s: low-pixel threshold %s, %d pixels masked at this chip position",
                    chip_label(model),
                    "none" if threshold is None else f"{threshold:.4g}",
                    int(np.count_nonzero(mask)),
                )
                library.shelve(model, index, modify=True)
        masked = sum(int(np.count_nonzero(mask)) for mask in result.masks.values())
        log.info(
            "Static masks of %d chip positions: %d pixels masked (sigma %g)",
            len(result.masks), masked, self.sigma,
        )  # fmt: skip
        if self.save_results:
            self._save(result.masks, library)
        return library

    def _save(self, masks, library):
        hdus = [fits.PrimaryHDU()]
        for number, (key, mask) in enumerate(masks.items(), start=1):
            instrument, detector, chip, _ = key
            hdu = fits.ImageHDU(mask.astype(np.uint8), name="STATMASK", ver=number)
            hdu.header["INSTRUME"] = instrument
            hdu.header["DETECTOR"] = detector
            hdu.header["CHIPNUM"] = chip
            hdu.header["COMMENT"] = "1 = bad pixel (below mode - sigma x rms in some exposure)"
            hdus.append(hdu)
        path = self.product_path(self.product_name(library), "staticmask")
        write_fits_atomic(fits.HDUList(hdus), path)
        log.info("Saved static masks in %s", path)
