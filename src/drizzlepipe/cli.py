"""The ``drizzlepipe`` command line.

Subcommands are registered in :data:`SUBCOMMANDS`, a mapping of name to
``(add_arguments, run, help)``: ``add_arguments(parser)`` declares the options of the subcommand
and ``run(args)`` executes it and returns the process exit code. Adding a subcommand is one
function pair and one entry in that mapping.

Example
-------
::

    drizzlepipe simulate OUTDIR --exposures 4 --shape 1024 1024 --chips 2 --seed 0
    drizzlepipe quicklook out/final_drz.fits --crf out/*_crf.fits -o quicklook.png
"""

from __future__ import annotations

import argparse
import sys

from . import convert_pars, quicklook

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _add_simulate_arguments(parser):
    parser.add_argument("outdir", help="directory for the _flt files (truth goes to OUTDIR/truth)")
    parser.add_argument("--exposures", type=int, default=4, help="number of exposures (4)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        default=(1024, 1024),
        help="pixels of one chip, rows then columns (1024 1024; a full UVIS chip is 2051 4096)",
    )
    parser.add_argument("--chips", type=int, default=2, choices=(1, 2), help="chips (2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--exptime", type=float, default=500.0, help="seconds (500)")
    parser.add_argument(
        "--sky-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(20.0, 80.0),
        help="sky of each exposure drawn in this range, electrons per pixel (20 80)",
    )
    parser.add_argument(
        "--cr-fraction",
        type=float,
        default=0.01,
        help="fraction of pixels hit by cosmic rays (0.01)",
    )
    parser.add_argument(
        "--psf-fwhm", type=float, default=1.8, help="PSF FWHM in pixels (1.8; 1.0 undersampled)"
    )
    parser.add_argument(
        "--psf-halo-fraction",
        type=float,
        default=0.0,
        help="flux fraction of a PSF halo 3x wider than the core (0)",
    )
    parser.add_argument(
        "--dither", type=float, default=5.0, help="largest dither per axis, pixels (5)"
    )
    parser.add_argument(
        "--rotation", type=float, default=0.05, help="largest rotation between exposures, deg"
    )
    parser.add_argument(
        "--stars", type=int, default=None, help="number of stars (default: 250 per Mpixel)"
    )
    parser.add_argument(
        "--galaxies", type=int, default=None, help="number of galaxies (default: 80 per Mpixel)"
    )
    parser.add_argument(
        "--distortion",
        type=float,
        default=0.006,
        help="largest SIP displacement / chip half-diagonal (0.006; 0 = TAN only)",
    )
    parser.add_argument(
        "--no-truth-models",
        action="store_true",
        help="do not write the noiseless model of every chip (saves disk for large runs)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier simulation"
    )


def _run_simulate(args):
    from drizzlepipe.simulator import simulate

    result = simulate(
        args.outdir,
        exposures=args.exposures,
        shape=tuple(args.shape),
        chips=args.chips,
        seed=args.seed,
        exptime=args.exptime,
        sky_range=tuple(args.sky_range),
        cr_fraction=args.cr_fraction,
        psf_fwhm=args.psf_fwhm,
        psf_halo_fraction=args.psf_halo_fraction,
        dither=args.dither,
        rotation=args.rotation,
        n_stars=args.stars,
        n_galaxies=args.galaxies,
        distortion=args.distortion,
        write_models=not args.no_truth_models,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(result.flt_files)} exposures to {result.outdir}:")
    for rootname, path in zip(result.rootnames, result.flt_files):
        print(f"  {path.name}  sky {result.sky[rootname]:.2f} e-/pixel")
    print(f"truth in {result.truth_dir}")
    return 0


#: name -> (add_arguments(parser), run(args) -> exit code, one-line help)
SUBCOMMANDS = {
    "simulate": (
        _add_simulate_arguments,
        _run_simulate,
        "write simulated WFC3/UVIS-like _flt exposures with their truth",
    ),
    "convert-pars": (
        convert_pars.add_arguments,
        convert_pars.run,
        "convert an AstroDrizzle parameter file (.cfg, HAP .json, MDRIZTAB) to ASDF parameters",
    ),
    "quicklook": (
        quicklook.add_arguments,
        quicklook.run,
        "write a PNG of a product, its weight map and the cosmic rays of _crf files",
    ),
}


def build_parser():
    """The argument parser with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    from drizzlepipe import __version__

    parser = argparse.ArgumentParser(
        prog="drizzlepipe",
        description="drizzlepipe: combine dithered exposures into one clean image.",
    )
    parser.add_argument("--version", action="version", version=f"drizzlepipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, run, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(_run=run)
    return parser


def main(argv=None):
    """Run the ``drizzlepipe`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit code: 0 on success, 1 when the command fails on bad input, 2 on a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args._run(args)
    except (ValueError, FileExistsError) as error:
        print(f"drizzlepipe {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
