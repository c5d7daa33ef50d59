"""Data models: exact FITS and ASDF round trips, atomic saves, schema registration."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ImageModel, ResampledModel
from fitsfactory import lookup_distortion, simple_gwcs, tan_sip_header


def _sip_lookup_wcs(shape):
    wcs = WCS(fits.Header(tan_sip_header(shape)))
    wcs.cpdis1, wcs.cpdis2, wcs.det2im1 = lookup_distortion(shape)
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


def _grid(shape, step=3.0):
    y, x = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    return x.ravel(), y.ravel()


def _image_model(rng, shape=(40, 50)):
    model = ImageModel(data=rng.normal(10, 2, shape).astype(np.float32))
    model.dq = rng.integers(0, 2**31, shape, dtype=np.uint32)
    model.dq[0, 0] = np.uint32(2**31 + 5)  # highest bit must survive FITS' signed storage
    model.err = rng.random(shape).astype(np.float32)
    model.var_rnoise = rng.random(shape).astype(np.float32)
    model.meta.wcs = _sip_lookup_wcs(shape)
    model.meta.filename = "chip_flt.fits"
    model.meta.exposure.exptime = 123.5
    model.meta.exposure.start = 60000.25
    model.meta.units = "counts"
    model.meta.bunit = "ELECTRONS"
    model.meta.detector.gain = 1.5
    model.meta.detector.readnoise = 3.25
    model.meta.detector.readout_direction = -1
    model.meta.detector.pixel_scale = 0.04
    model.meta.background.level = 12.5
    model.meta.background.subtracted = False
    model.meta.group_id = "jtest01aq"
    model.meta.chip = 2
    model.meta.cal_step.sky_sub = "COMPLETE"
    return model


@pytest.mark.parametrize("suffix", [".fits", ".asdf"])
def test_image_model_round_trip_is_exact(tmp_path, rng, suffix):
    model = _image_model(rng)
    path = model.save(tmp_path / f"out{suffix}")
    back = dm.open(path)
    assert isinstance(back, ImageModel)
    for name in ("data", "dq", "err", "var_rnoise"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
        assert getattr(back, name).dtype == getattr(model, name).dtype
    assert back.var_poisson is None
    # The WCS, with SIP and both lookup tables, gives the same sky positions everywhere
    # (1e-9 arcsec: round-off of the degree -> arcsec conversion only).
    x, y = _grid(model.data.shape)
    before = np.array(model.meta.wcs.all_pix2world(x, y, 0))
    after = np.array(back.meta.wcs.all_pix2world(x, y, 0))
    assert np.max(np.abs(after - before)) * 3600 < 1e-9
    assert back.meta.wcs.cpdis1 is not None and back.meta.wcs.det2im1 is not None
    flat_in = {k: v for k, v in model.to_flat_dict(include_arrays=False).items()}
    flat_out = back.to_flat_dict(include_arrays=False)
    for key in (
        "meta.exposure.exptime",
        "meta.exposure.start",
        "meta.units",
        "meta.detector.gain",
        "meta.detector.readnoise",
        "meta.detector.readout_direction",
        "meta.background.level",
        "meta.background.subtracted",
        "meta.group_id",
        "meta.chip",
        "meta.cal_step.sky_sub",
    ):
        assert flat_out[key] == flat_in[key], key
    assert back.meta.filename == f"out{suffix}"


def test_fits_product_has_viewer_readable_wcs_and_keywords(tmp_path, rng):
    model = _image_model(rng)
    path = model.save(tmp_path / "out.fits")
    with fits.open(path) as hdul:
        sci = hdul["SCI"].header
        assert sci["MDRIZSKY"] == 12.5
        assert sci["CTYPE1"].startswith("RA---TAN")
        assert "A_2_0" in sci
        assert hdul[0].header["EXPTIME"] == 123.5
        assert hdul[0].header["DPSOFT"] == "drizzlepipe"
        assert "ASDF" in hdul


@pytest.mark.parametrize("suffix", [".fits", ".asdf"])
def test_resampled_model_round_trip_with_many_context_planes(tmp_path, rng, suffix):
    shape = (20, 24)
    model = ResampledModel(data=rng.random(shape).astype(np.float32))
    model.wht = rng.random(shape).astype(np.float32)
    model.err = rng.random(shape).astype(np.float32)
    # 40 inputs -> two 32-bit planes; bit 31 (sign bit of int32) used too.
    model.con = rng.integers(-(2**31), 2**31 - 1, (2, *shape), dtype=np.int32)
    model.meta.wcs = WCS(fits.Header(tan_sip_header(shape, sip=False)))
    model.meta.product_type = "drz"
    model.meta.resample.inputs = [f"f{i}_flt.fits[SCI,1]" for i in range(40)]
    model.meta.resample.texptime = 4000.0
    model.meta.resample.kernel = "square"
    path = model.save(tmp_path / f"final_drz{suffix}")
    back = dm.open(path)
    assert isinstance(back, ResampledModel)
    for name in ("data", "wht", "err", "con"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
    assert list(back.meta.resample.inputs) == list(model.meta.resample.inputs)
    assert back.meta.resample.texptime == 4000.0
    x, y = _grid(shape, 2.0)
    np.testing.assert_allclose(
        back.meta.wcs.pixel_to_world_values(x, y), model.meta.wcs.pixel_to_world_values(x, y),
        rtol=0, atol=1e-12,
    )  # fmt: skip


def test_gwcs_round_trip(tmp_path, rng):
    shape = (16, 18)
    model = ImageModel(data=rng.random(shape).astype(np.float32))
    model.meta.wcs = simple_gwcs(shape)
    for suffix in (".fits", ".asdf"):
        back = dm.open(model.save(tmp_path / f"g{suffix}"))
        x, y = _grid(shape, 1.0)
        np.testing.assert_array_equal(back.meta.wcs(x, y), model.meta.wcs(x, y))


def test_save_is_atomic_on_failure(tmp_path, rng, monkeypatch):
    model = _image_model(rng)
    target = tmp_path / "keep.fits"
    target.write_bytes(b"previous content")
    from stdatamodels import fits_support

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fits_support, "to_fits", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save(target)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.fits"]


def test_schemas_are_registered_with_asdf():
    import asdf

    for name in ("core", "image", "resampled"):
        schema = asdf.schema.load_schema(f"http://drizzlepipe.org/schemas/{name}.schema")
        assert schema["id"].endswith(f"{name}.schema")


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.uint8])
def test_bad_pixel_masks_are_the_dq_bits_outside_good_bits(dtype):
    from drizzlepipe.datamodels.dqflags import any_bits_set, bad_pixel_mask

    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    dq = rng.integers(0, top, (300, 70), endpoint=True).astype(dtype)
    dq[rng.random(dq.shape) < 0.5] = 0
    wide = dq.astype(np.int64)
    for bits in (1, 4096, 0xFFFF, 0xFFFFFFFF, ~4096 & 0xFFFFFFFF, 0):
        np.testing.assert_array_equal(any_bits_set(dq, bits), (wide & bits) != 0)
    # good_bits as AstroDrizzle and the JWST pipeline write them
    np.testing.assert_array_equal(bad_pixel_mask(dq, 0), dq != 0)
    np.testing.assert_array_equal(bad_pixel_mask(dq, "4+8"), (wide & ~12) != 0)
    np.testing.assert_array_equal(bad_pixel_mask(dq, "~4"), (wide & 4) != 0)
    assert not bad_pixel_mask(dq, None).any()
    jwst = bad_pixel_mask(dq, "~DO_NOT_USE", convention="jwst")
    np.testing.assert_array_equal(jwst, (wide & 1) != 0)
    assert any_bits_set(np.zeros((0, 3), np.uint32), 1).shape == (0, 3)
