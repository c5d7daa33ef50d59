"""drizzlepipe: combine dithered exposures into one clean image, as AstroDrizzle, on stpipe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("drizzlepipe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
