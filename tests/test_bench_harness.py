"""Tests of the benchmark harness in ``bench/_harness.py`` (timing, peak RSS, AstroDrizzle runs)."""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HARNESS_PATH = Path(__file__).resolve().parents[1] / "bench" / "_harness.py"


def _load_harness():
    # bench/ is a folder of scripts, not a package: load the module from its file.
    if "_harness" in sys.modules:
        return sys.modules["_harness"]
    spec = importlib.util.spec_from_file_location("_harness", HARNESS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_harness"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

# Copied from the log of a real run made with this harness (drizzlepac 3.11, the ACS/HRC pair in
# shared/data/hrc_f606w, skymethod='globalmin+match'): the end of the last step and the timing
# table exactly as drizzlepac's file handler writes it (the header lines carry no level prefix).
REAL_LOG_EXCERPT = """\
[INFO    ] ==== Processing Step 'Final Drizzle' finished at 00:32:53.936 (22/11/2026)
[INFO    ] 
   --------------------          --------------------
                   Step          Elapsed time
   --------------------          --------------------

[INFO    ]    Initialization                0.2885 sec 
[INFO    ]    Static Mask                   0.1659 sec 
[INFO    ]    Subtract Sky                  0.4838 sec 
[INFO    ]    Separate Drizzle              0.9850 sec 
[INFO    ]    Create Median                 0.7973 sec 
[INFO    ]    Blot                          0.7911 sec 
[INFO    ]    Driz_CR                       0.4037 sec 
[INFO    ]    Final Drizzle                 2.8700 sec 
[INFO    ]    ====================          ====================
[INFO    ]    Total                         6.7853 sec
[INFO    ] 
[INFO    ] Trailer file written to: astrodrizzle.log
"""  # noqa: W291 (drizzlepac writes trailing blanks; the parser must cope with them)


def test_measure_wall_time_of_a_sleep():
    slept = 0.2
    result, wall_s, peak_rss_mib = harness.measure(time.sleep, slept)
    assert result is None
    # sleep never returns early; 50 ms covers scheduler latency on the shared 2-core machine
    # plus the sampler thread's start and join.
    assert slept <= wall_s < slept + 0.05
    assert peak_rss_mib > 0.0


def test_measure_sees_a_transient_200_mib_allocation():
    size_mib = 200

    def allocate_and_release():
        block = np.ones(size_mib * 2**20 // 8)  # np.ones writes every page: all of it resident
        time.sleep(0.25)  # a dozen sampling intervals at the peak
        total = float(block[::4096].sum())
        del block
        return total

    measurement = harness.measure(allocate_and_release)
    assert measurement.result == size_mib * 2**20 // 8 // 4096
    assert measurement.samples >= 5
    rise = measurement.peak_rss_mib - measurement.start_rss_mib
    # The array is exactly 200 MiB; the rest of the process (pytest, the sampler) moves by a few
    # MiB at most, so 30 MiB is a generous bound on everything else.
    assert rise == pytest.approx(size_mib, abs=30)
    # The sampled peak alone sees it too (the block stays resident for 250 ms = 12 samples).
    assert measurement.sampled_peak_rss_mib - measurement.start_rss_mib == pytest.approx(
        size_mib, abs=30
    )


def test_measure_peak_includes_a_returned_array():
    size_mib = 120
    measurement = harness.measure(np.ones, size_mib * 2**20 // 8)
    assert measurement.result.nbytes == size_mib * 2**20
    # Same bound as above: the returned array is still resident at the final sample.
    assert measurement.peak_rss_mib - measurement.start_rss_mib == pytest.approx(size_mib, abs=30)


def test_parse_real_astrodrizzle_timing_table():
    times = harness.parse_astrodrizzle_step_times(REAL_LOG_EXCERPT)
    expected = {
        "initialization": 0.2885,
        "static_mask": 0.1659,
        "sky": 0.4838,
        "driz_separate": 0.9850,
        "median": 0.7973,
        "blot": 0.7911,
        "driz_cr": 0.4037,
        "final": 2.8700,
    }
    assert times.seconds == pytest.approx(expected, abs=0)  # the digits are printed exactly
    assert set(times.status.values()) == {"finished"}
    assert times.total_s == 6.7853
    # AstroDrizzle's Total is the sum of its rows, rounded to 0.1 ms per row.
    assert sum(times.seconds.values()) == pytest.approx(times.total_s, abs=1e-3)


def test_parse_takes_the_last_table_and_reads_step_notes():
    # AstroDrizzle appends to an existing log; steps turned off get an "(off)" note.
    second_run = (
        REAL_LOG_EXCERPT.replace(
            "Static Mask                   0.1659 sec ", "Static Mask   0.0001 sec (off)"
        )
        .replace("Driz_CR                       0.4037 sec ", "Driz_CR   0.0002 sec (skipped)")
        .replace("6.7853", "6.2158")
    )
    times = harness.parse_astrodrizzle_step_times(REAL_LOG_EXCERPT + second_run)
    assert times.seconds["static_mask"] == 0.0001
    assert times.status["static_mask"] == "off"
    assert times.status["driz_cr"] == "skipped"
    assert times.status["final"] == "finished"
    assert times.total_s == 6.2158


def test_parse_rejects_a_log_without_a_timing_table():
    with pytest.raises(ValueError, match="timing table"):
        harness.parse_astrodrizzle_step_times("[INFO    ] Setting up logfile : astrodrizzle.log\n")


def test_print_side_by_side_ratio_and_missing_values():
    rows = harness.step_rows(
        {"sky": 2.0, "final": 4.0},
        {"sky": 5.0, "final": 1.0, "median": 3.0},
        ours_total_s=6.0,
        astrodrizzle_total_s=9.0,
    )
    stream = io.StringIO()
    text = harness.print_side_by_side(rows, peak_rss_mib=(400.0, 1380.0), file=stream)
    assert stream.getvalue() == text
    table = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line[0] != "-"}
    assert list(table)[:7] == list(harness.STEP_KEYS)
    assert table["sky"] == ["2.000", "5.000", "2.50"]  # AD / ours
    assert table["final"] == ["4.000", "1.000", "0.25"]
    assert table["median"] == ["-", "3.000", "-"]
    assert table["total"] == ["6.000", "9.000", "1.50"]
    assert table["peak"] == ["RSS", "MiB", "400", "1380", "3.45"]
    # Fixed width: every table line as wide as the header.
    widths = {len(line) for line in text.splitlines()}
    assert len(widths) == 1


def test_step_windows_from_both_logs_and_the_peak_inside_each():
    # AstroDrizzle's "Processing Step" lines (local time) and drizzlepipe's "Step <name>
    # finished in <s> s" lines (asctime first) become windows of time.time() seconds
    ad_log = (
        "==== Processing Step 'Static Mask' started at 21:53:30.565 (06/12/2026)\n"
        "[INFO    ] ==== Processing Step 'Static Mask' finished at 21:53:32.366 (06/12/2026)\n"
        "==== Processing Step 'Driz_CR' started at 21:54:04.062 (06/12/2026)\n"
        "[INFO    ] ==== Processing Step 'Driz_CR' finished at 21:54:15.179 (06/12/2026)\n"
    )
    windows = harness.astrodrizzle_step_windows(ad_log)
    start = time.mktime(time.strptime("06/12/2026 21:53:30", "%d/%m/%Y %H:%M:%S")) + 0.565
    assert set(windows) == {"static_mask", "driz_cr"}
    assert windows["static_mask"] == pytest.approx((start, start + 1.801), abs=1e-6)
    ours_log = (
        "2026-12-06 21:05:29,259 drizzlepipe.pipelines.drizzle_pipeline INFO Step static_mask "
        "finished in 0.84 s\n"
        "2026-12-06 21:05:30,480 drizzlepipe.pipelines.drizzle_pipeline INFO Step sky_sub "
        "finished in 1.22 s\n"
    )
    ours = harness.drizzlepipe_step_windows(ours_log)
    end = time.mktime(time.strptime("2026-12-06 21:05:30", "%Y-%m-%d %H:%M:%S")) + 0.48
    assert ours["sky_sub"] == pytest.approx((end - 1.22, end), abs=1e-6)
    mib = harness.MIB
    series = [(end - 1.5, 900 * mib), (end - 1.0, 700 * mib), (end - 0.1, 800 * mib)]
    peaks = harness.peaks_in_windows(series, ours)
    # the 900 MiB sample lies in the static mask's window, before the sky step began
    assert peaks == {"static_mask": 900.0, "sky_sub": 800.0}
    assert harness.peaks_in_windows([], ours)["sky_sub"] is None


# --- AstroDrizzle end to end (peer) -------------------------------------------------------------

# Header values taken from a real WFC3/UVIS FLC (hst_11665_06_wfc3_uvis_f555w_ib4606c6_flc).
UVIS_CD = (
    (4.9739868675972e-06, -9.5538625840149e-06),
    (-9.8882887255471e-06, -5.5866929334496e-06),
)
UVIS_READNOISE = {"A": 3.03, "B": 3.13, "C": 3.08, "D": 3.18}
UVIS_GAIN = 1.56


def _uvis_flt(path, rootname, dither_px, rng, cosmic_rays):
    """A two-chip WFC3/UVIS-like FLT of 64x64 chips in electrons, stars on a 30 e- sky."""
    from astropy.io import fits

    shape = (64, 64)
    gap_px = 4  # chips stacked in y with a small gap, like UVIS1 above UVIS2
    exptime = 400.0
    primary = fits.Header()
    primary.update(
        TELESCOP="HST", INSTRUME="WFC3", DETECTOR="UVIS", FILTER="F555W", APERTURE="UVIS",
        ROOTNAME=rootname, EXPTIME=exptime, EXPSTART=55611.0278, EXPEND=55611.0324,
        **{"DATE-OBS": "2011-02-19", "TIME-OBS": "00:40:14"},
        PA_V3=194.955307, CCDAMP="ABCD", CCDGAIN=1.5, SUBARRAY=True, FLASHDUR=0.0,
        NPOLFILE="N/A", D2IMFILE="N/A", DGEOFILE="N/A", IDCTAB="N/A",
        PHOTFLAM=1.8379346e-19, PHOTZPT=-21.1, PHOTPLAM=5308.4, PHOTBW=1565.0,
    )  # fmt: skip
    for amp in "ABCD":
        primary[f"ATODGN{amp}"] = UVIS_GAIN
        primary[f"READNSE{amp}"] = UVIS_READNOISE[amp]
    hdus = [fits.PrimaryHDU(header=primary)]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    stars = [(20.0, 15.0, 5000.0), (45.0, 40.0, 12000.0), (30.0, 58.0, 3000.0)]
    for extver, ccdchip in ((1, 2), (2, 1)):
        # Shared tangent plane: chip 2 sits (64 + gap) px above chip 1; the dither moves both.
        crpix = (32.5 - dither_px[0], 32.5 - dither_px[1] - (extver - 1) * (shape[0] + gap_px))
        sky_e = 30.0
        image = np.full(shape, sky_e)
        for x0, y0, flux in stars:
            x_chip, y_chip = x0 - dither_px[0], y0 - dither_px[1]
            image += (
                flux
                / (2 * np.pi * 1.5**2)
                * np.exp(-((xx - x_chip) ** 2 + (yy - y_chip) ** 2) / (2 * 1.5**2))
            )
        noise_e = np.sqrt(image + UVIS_READNOISE["A"] ** 2)
        image = image + rng.normal(0.0, 1.0, shape) * noise_e
        for y, x in cosmic_rays[extver]:
            image[y, x] += 3000.0
        sci = fits.Header()
        sci.update(
            EXTNAME="SCI", EXTVER=extver, BUNIT="ELECTRONS", ROOTNAME=rootname, EXPNAME=rootname,
            CCDCHIP=ccdchip, NGOODPIX=shape[0] * shape[1], MEANDARK=0.125, ORIENTAT=-120.2,
            PA_APER=-120.208, VAFACTOR=1.0, LTV1=0.0, LTV2=0.0, LTM1_1=1.0, LTM2_2=1.0,
            WCSAXES=2, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CUNIT1="deg", CUNIT2="deg",
            CRPIX1=crpix[0], CRPIX2=crpix[1], CRVAL1=137.8644413309, CRVAL2=-64.90411819877,
            CD1_1=UVIS_CD[0][0], CD1_2=UVIS_CD[0][1], CD2_1=UVIS_CD[1][0], CD2_2=UVIS_CD[1][1],
            RADESYS="ICRS", WCSNAME="SYNTHETIC", PHOTFLAM=1.8379346e-19,
        )  # fmt: skip
        hdus.append(fits.ImageHDU(image.astype(np.float32), header=sci))
        err = fits.Header({"EXTNAME": "ERR", "EXTVER": extver, "BUNIT": "ELECTRONS"})
        hdus.append(fits.ImageHDU(noise_e.astype(np.float32), header=err))
        hdus.append(
            fits.ImageHDU(
                np.zeros(shape, np.int16), header=fits.Header({"EXTNAME": "DQ", "EXTVER": extver})
            )
        )
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.peer
def test_run_astrodrizzle_on_two_small_uvis_exposures(tmp_path, rng):
    import drizzlepac  # the peer: present only in .venv-peers
    from astropy.io import fits
    from astropy.wcs import WCS

    inputs_dir = tmp_path / "inputs"
    inputs_dir.mkdir()
    # (y, x) of single-pixel cosmic rays per SCI extension, away from the stars and the edges
    cosmic_rays = [
        {1: [(10, 50), (33, 8)], 2: [(52, 22)]},
        {1: [(40, 30)], 2: [(12, 12), (55, 47)]},
    ]
    files = [
        _uvis_flt(inputs_dir / f"{rootname}_flt.fits", rootname, dither_px, rng, crs)
        for rootname, dither_px, crs in zip(
            ("ib4606c6q", "ib4606c7q"), ((0.0, 0.0), (2.5, 1.5)), cosmic_rays, strict=True
        )
    ]
    originals = [path.read_bytes() for path in files]

    run = harness.run_astrodrizzle(
        files,
        tmp_path / "work",
        peer_python=sys.executable,  # this test runs in the peer venv
        num_cores=1, build=True, clean=False, in_memory=False, context=True,
        preserve=False, restore=False, skymethod="globalmin",
    )  # fmt: skip

    assert drizzlepac.__version__
    assert [path.read_bytes() for path in files] == originals  # ran on copies only
    assert set(harness.STEP_KEYS) <= set(run.step_s)
    assert all(run.step_s[key] >= 0.0 for key in harness.STEP_KEYS)
    assert all(run.step_status[key] == "finished" for key in harness.STEP_KEYS)
    # The call timed in the child contains every step; AstroDrizzle rounds each to 0.1 ms and
    # leaves out small gaps between steps, so the sum may only fall short, by < 10 ms.
    assert run.total_s >= sum(run.step_s.values()) - 0.01
    assert run.process_wall_s >= run.total_s
    assert run.peak_rss_mib >= run.baseline_rss_mib > 0.0

    assert [path.name for path in run.products] == ["final_drz.fits"]
    assert len(run.crmasks) == 4  # one per chip and exposure (clean=False keeps them)
    assert len(run.single_sci) == 2 and len(run.medians) == 1
    assert run.log_path.is_file()
    with fits.open(run.product) as product:
        sci = product["SCI"].data
        product_wcs = WCS(product["SCI"].header)
    for copy in run.input_copies:
        with fits.open(copy) as exposure:
            for extver in (1, 2):
                # The output grid is rotated and has a gap between the chips (NaN fill): look
                # at the output pixels around the centre of each chip.
                chip_wcs = WCS(exposure["SCI", extver].header)
                x, y = product_wcs.world_to_pixel(chip_wcs.pixel_to_world(31.5, 31.5))
                x, y = int(round(float(x))), int(round(float(y)))
                assert np.isfinite(sci[y - 5 : y + 5, x - 5 : x + 5]).all()
    # The copies carry AstroDrizzle's cosmic-ray flags (DQ bit 4096) where we planted them.
    for copy, planted in zip(run.input_copies, cosmic_rays, strict=True):
        with fits.open(copy) as exposure:
            for extver, positions in planted.items():
                flagged = (exposure["DQ", extver].data & 4096) != 0
                assert all(flagged[y, x] for y, x in positions)
                # Each hit flags itself, plus its neighbours when driz_cr_grow > 1 (default 1).
                # Pure noise rarely passes driz_cr's 3.5-sigma and neighbour tests; the upper
                # bound (a full 3x3 per hit) leaves room for a few such false flags.
                assert len(positions) <= flagged.sum() <= 9 * len(positions)


def _load_pipeline_bench():
    path = HARNESS_PATH.parent / "pipeline_vs_astrodrizzle.py"
    spec = importlib.util.spec_from_file_location("pipeline_vs_astrodrizzle", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline_vs_astrodrizzle"] = module
    spec.loader.exec_module(module)  # finds _harness in sys.modules
    return module


def test_repeated_runs_report_per_step_medians_and_the_largest_peak(capsys):
    bench = _load_pipeline_bench()

    def ours(total, separate, blot, final, peak):
        steps = {"driz_separate": separate, "blot_cr": blot, "driz_final": final}
        return bench.OursRun(total, total + 1, 1.0, steps, peak, 130.0, peak, peak, "out", "log")

    def peer(total, separate, blot, final):
        steps = {"driz_separate": separate, "blot": blot, "driz_cr": 1.0, "final": final}
        return harness.AstroDrizzleRun(
            total_s=total, process_wall_s=total + 2, step_s=steps, step_status={},
            log_total_s=total, peak_rss_mib=1400.0, baseline_rss_mib=260.0, maxrss_mib=1400.0,
            polled_peak_rss_mib=1400.0, workdir=Path("ad"), log_path=Path("ad.log"),
            input_copies=[],
        )  # fmt: skip

    pairs = [
        (False, ours(20.0, 3.0, 6.0, 5.0, 2000.0), peer(50.0, 6.0, 16.0, 12.0)),
        (True, ours(18.0, 2.0, 5.0, 7.0, 2100.0), peer(56.0, 5.0, 17.0, 13.0)),
        (False, ours(30.0, 2.5, 9.0, 6.0, 1900.0), peer(54.0, 7.0, 15.0, 14.0)),
    ]
    median = bench.median_run([o for _, o, _ in pairs])
    assert median.total_s == 20.0 and median.peak_rss_mib == 2100.0
    assert median.step_s == {"driz_separate": 2.5, "blot_cr": 6.0, "driz_final": 6.0}
    assert bench.median_run([p for _, _, p in pairs]).step_s["final"] == 13.0
    bench.print_repeats(pairs)
    lines = capsys.readouterr().out.splitlines()
    run_two = next(line for line in lines if line.startswith("2 "))
    # run 2: driz_separate 5/2 = 2.50, blot_cr 18/5 = 3.60, final 13/7 = 1.86 (below 2: marked)
    assert "drizzlepipe" in run_two and "2.50" in run_two and "3.60" in run_two
    assert run_two.rstrip().endswith("1.86 !")
