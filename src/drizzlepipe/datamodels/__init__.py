"""drizzlepipe data models, readers and the ModelLibrary of step inputs.

``drizzlepipe.datamodels.open(path)`` returns an :class:`ImageModel` for a one-chip file, a
list of them (in SCI extension order) for a multi-chip exposure, and a :class:`ResampledModel`
for drizzlepipe's resampled products. Input files are never modified.
"""

from . import dqflags
from .library import ModelLibrary, build_association, resolve_input_files
from .models import DrizDataModel, ImageModel, ResampledModel
from .readers import open_path

__all__ = [
    "open",
    "DrizDataModel",
    "ImageModel",
    "ResampledModel",
    "ModelLibrary",
    "build_association",
    "resolve_input_files",
    "dqflags",
]


def open(init, **options):  # noqa: A001 - mirrors stdatamodels' API
    """Open a file (or return a model unchanged) as drizzlepipe model(s).

    Parameters
    ----------
    init : str, Path or DrizDataModel
        HST exposure, JWST ``_cal``, plain FITS image, or a drizzlepipe FITS/ASDF product;
        ``"file.fits[SCI,n]"`` selects one chip.
    **options
        Reader options: ``units`` (``counts``, ``countrate`` or ``surface_brightness``),
        ``exptime`` [s], ``gain`` [e-/DN], ``readnoise`` [e-], ``resetbits`` (see
        :func:`~drizzlepipe.datamodels.readers.open_path`).

    Returns
    -------
    ImageModel, list of ImageModel, or ResampledModel
    """
    if isinstance(init, DrizDataModel):
        return init
    return open_path(init, **options)
