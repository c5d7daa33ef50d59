"""``drizzlepipe quicklook`` (issue 18, item 3): the product, its weights, and the chips of _crf
files with cosmic rays and other DQ flags in different colours."""

from __future__ import annotations

import numpy as np
import pytest

from drizzlepipe.cli import main
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.quicklook import dq_layers

matplotlib = pytest.importorskip("matplotlib")


def test_dq_layers_keep_cosmic_rays_apart_from_other_flags():
    dq = np.array([[0, 4096, 4], [4096 | 4, 16, 0]], np.uint32)
    cosmic, other = dq_layers(dq, 4096)
    # a bad column (4) or hot pixel (16) is not a cosmic ray, even where the cosmic-ray test
    # flagged it too (4096 | 4): it shows as the bad pixel it was in the input
    assert cosmic.tolist() == [[False, True, False], [False, False, False]]
    assert other.tolist() == [[False, False, True], [True, True, False]]
    jwst_cosmic, _ = dq_layers(np.array([[17, 1]], np.uint32), 17)  # OUTLIER + DO_NOT_USE
    assert jwst_cosmic.tolist() == [[True, False]]


def test_quicklook_from_the_command_line(small_simulation, tmp_path, capsys):
    files = [str(p) for p in small_simulation.flt_files[:2]]
    DrizzlePipeline.call(files, output_dir=str(tmp_path), configure_log=False,
                         steps={"blot_cr": {"save_results": True}})  # fmt: skip
    crf = sorted(str(p) for p in tmp_path.glob("*_crf.fits"))
    png = tmp_path / "look.png"
    assert main(["quicklook", str(tmp_path / "final_drz.fits"), "--crf", *crf, "-o", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    image = matplotlib.image.imread(png)
    # two rows: product and weight above, the 4 chips of the 2 files below
    assert image.shape[0] == pytest.approx(2 * 4.4 * 90, abs=2)
    assert image.shape[1] == pytest.approx(4 * 4.2 * 90, abs=2)
    # red (cosmic rays) and blue (other DQ flags) pixels are both drawn
    rgb = image[..., :3]
    red = (rgb[..., 0] > 0.85) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > rgb[..., 0] + 0.4) & (rgb[..., 2] > rgb[..., 1])
    assert red.sum() > 100 and blue.sum() > 20


def test_quicklook_of_a_file_that_is_not_a_product_says_so(small_simulation, capsys):
    code = main(["quicklook", str(small_simulation.flt_files[0])])
    assert code == 1
    assert "not a drizzled product (no WHT)" in capsys.readouterr().err


def test_a_plain_fits_copy_shows_its_image_and_dq(tmp_path):
    """A plain FITS _crf copy holds the image in its primary HDU and the flags in DQ."""
    from astropy.io import fits

    from drizzlepipe.quicklook import _chips

    image = np.random.default_rng(1).normal(10, 1, (20, 30)).astype(np.float32)
    dq = np.zeros(image.shape, np.uint32)
    dq[3, 4], dq[5, :] = 4096, 4
    path = tmp_path / "frame_crf.fits"
    fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(dq, name="DQ")]).writeto(path)
    ((title, shown, flags, crbit),) = _chips([path])
    assert title == "frame_crf.fits PRIMARY" and crbit == 4096
    np.testing.assert_array_equal(shown, image)
    cosmic, other = dq_layers(flags, crbit)
    assert cosmic.sum() == 1 and other.sum() == 30
