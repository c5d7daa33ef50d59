"""Steps are repeatable (issue 16, item 4): calling a step twice with different parameters on the
same inputs gives what one call on fresh inputs gives, and ``resetbits`` (item 3) clears old
cosmic-ray flags in memory only.

Each test runs a step with other parameters first, then with the ones compared, on one library,
and compares with the same step on a fresh library of the same files.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits

from drizzlepipe.datamodels import ModelLibrary
from drizzlepipe.pipelines import DrizzlePipeline
from drizzlepipe.steps import (
    BlotCRStep,
    CreateMedianStep,
    DrizFinalStep,
    DrizSeparateStep,
    SkySubStep,
    StaticMaskStep,
)
from fitsfactory import make_jwst_cal


def _library(simulation):
    return ModelLibrary([str(p) for p in simulation.flt_files])


def _state(library, *names):
    """Copies of the named arrays/metadata of every chip."""
    out = []
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            state = {}
            for name in names:
                if name.startswith("meta."):
                    node = model.meta
                    for part in name.split(".")[1:]:
                        node = getattr(node, part, None) if node is not None else None
                    state[name] = node
                else:
                    value = getattr(model, name)
                    state[name] = None if value is None else np.array(value)
            out.append(state)
            library.shelve(model, index, modify=False)
    return out


def _assert_same(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second):
        for key in one:
            if isinstance(one[key], np.ndarray):
                np.testing.assert_array_equal(one[key], other[key], err_msg=key)
            else:
                assert one[key] == other[key], key


def _call(step_class, *args, **pars):
    return step_class.call(*args, configure_log=False, **pars)


@pytest.fixture(scope="module")
def median_product(small_simulation):
    """A median of the simulated exposures, for BlotCR."""
    library = _library(small_simulation)
    _call(SkySubStep, library, method="globalmin")
    singles = _call(DrizSeparateStep, library)
    return _call(CreateMedianStep, singles)


def test_static_mask_twice_equals_once(small_simulation):
    library = _library(small_simulation)
    _call(StaticMaskStep, library, sigma=1.0)
    _call(StaticMaskStep, library, sigma=4.0)
    fresh = _library(small_simulation)
    _call(StaticMaskStep, fresh, sigma=4.0)
    _assert_same(_state(library, "static_mask", "dq"), _state(fresh, "static_mask", "dq"))


def test_sky_twice_equals_once_even_after_a_subtracting_call(small_simulation):
    library = _library(small_simulation)
    _call(SkySubStep, library, method="localmin", subtract=True, stat="mean")
    _call(SkySubStep, library, method="globalmin")
    fresh = _library(small_simulation)
    _call(SkySubStep, fresh, method="globalmin")
    names = ("data", "meta.background.level", "meta.background.subtracted")
    _assert_same(_state(library, *names), _state(fresh, *names))


def test_blot_cr_twice_equals_once(small_simulation, median_product):
    # the case: snr '2.0 1.5' first left 90,844 CR pixels where a fresh call left 52,755
    library = _library(small_simulation)
    _call(SkySubStep, library, method="globalmin")
    _call(BlotCRStep, library, median_product, snr="2.0 1.5", grow=3)
    loose = sum(s["meta.cosmic_rays.npix"] for s in _state(library, "meta.cosmic_rays.npix"))
    _call(BlotCRStep, library, median_product)
    fresh = _library(small_simulation)
    _call(SkySubStep, fresh, method="globalmin")
    _call(BlotCRStep, fresh, median_product)
    names = ("dq", "meta.cosmic_rays.npix", "meta.cosmic_rays.fraction")
    again, once = _state(library, *names), _state(fresh, *names)
    _assert_same(again, once)
    assert loose > 1.3 * sum(s["meta.cosmic_rays.npix"] for s in once)  # the first call differed


def test_blot_cr_keeps_flags_the_input_had(small_simulation, median_product):
    """Flags an input carries (with resetbits=0) are not BlotCR's to clear on a second call."""
    library = ModelLibrary([str(p) for p in small_simulation.flt_files], resetbits="0")
    with library:
        model = library.borrow(0)
        model.dq[10:20, 10:20] |= np.uint32(4096)  # as left by an earlier drizzle run
        library.shelve(model, 0)
    _call(SkySubStep, library, method="globalmin")
    _call(BlotCRStep, library, median_product, snr="2.0 1.5")
    _call(BlotCRStep, library, median_product, snr="8 7")
    (first,) = _state(library, "dq")[:1]
    assert np.all(first["dq"][10:20, 10:20] & 4096)


@pytest.mark.parametrize("step_class, first_pars", [
    (DrizSeparateStep, {"kernel": "point"}),
    (DrizFinalStep, {"kernel": "point", "weight_type": "err"}),
])  # fmt: skip
def test_drizzle_steps_leave_the_chips_alone(small_simulation, step_class, first_pars):
    library = _library(small_simulation)
    _call(SkySubStep, library, method="globalmin")
    before = _state(library, "data", "dq", "err")
    _call(step_class, library, **first_pars)
    again = _call(step_class, library)
    fresh = _library(small_simulation)
    _call(SkySubStep, fresh, method="globalmin")
    once = _call(step_class, fresh)
    _assert_same(_state(library, "data", "dq", "err"), before)
    products = (again, once) if isinstance(again, list) else ([again], [once])
    for one, other in zip(*products):
        np.testing.assert_array_equal(one.data, other.data)
        np.testing.assert_array_equal(one.wht, other.wht)


def test_create_median_twice_equals_once_and_leaves_the_singles(small_simulation):
    library = _library(small_simulation)
    _call(SkySubStep, library, method="globalmin")
    singles = _call(DrizSeparateStep, library)
    copies = [(s.data.copy(), s.wht.copy()) for s in singles]
    _call(CreateMedianStep, singles, combine_type="mean", nhigh=1)
    again = _call(CreateMedianStep, singles)
    for single, (data, wht) in zip(singles, copies):
        np.testing.assert_array_equal(single.data, data)
        np.testing.assert_array_equal(single.wht, wht)
    once = _call(CreateMedianStep, [s.copy() for s in singles])
    np.testing.assert_array_equal(again.data, once.data)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resetbits_clears_old_cosmic_ray_flags_in_memory_only(small_simulation, tmp_path):
    # inputs drizzled before: DQ 4096 at some pixels, as AstroDrizzle leaves them
    files = []
    for source in small_simulation.flt_files[:2]:
        path = tmp_path / source.name
        with fits.open(source) as hdulist:
            hdulist["DQ", 1].data[0:30, 0:30] |= np.int16(4096)
            hdulist.writeto(path)
        files.append(path)
    digests = [_digest(p) for p in files]
    by_default = ModelLibrary([str(p) for p in files], resetbits="auto")
    kept = ModelLibrary([str(p) for p in files], resetbits="0")
    assert not any(np.any(s["dq"] & 4096) for s in _state(by_default, "dq"))
    assert all(np.all(s["dq"][0:30, 0:30] & 4096) for s in _state(kept, "dq")[::2])
    # the pipeline's default is 'auto': the old flags do not mask the pixels in the product
    final = DrizzlePipeline.call([str(p) for p in files], configure_log=False,
                                 steps={"blot_cr": {"skip": True}})  # fmt: skip
    masked = DrizzlePipeline.call([str(p) for p in files], configure_log=False, resetbits="0",
                                  steps={"blot_cr": {"skip": True}})  # fmt: skip
    assert final.wht.sum() > masked.wht.sum()
    assert [_digest(p) for p in files] == digests  # inputs untouched


def test_resetbits_auto_leaves_jwst_flags(tmp_path):
    path = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    model = make_jwst_cal(path)
    from stdatamodels.jwst import datamodels as jdm

    with jdm.open(str(path)) as jwst:
        jwst.dq[5, 5] = 4096  # WARM in JWST's flags, not a cosmic ray
        jwst.save(str(path))
    (auto,) = _state(ModelLibrary(str(path), resetbits="auto"), "dq")
    (explicit,) = _state(ModelLibrary(str(path), resetbits="WARM"), "dq")
    assert auto["dq"][5, 5] == 4096 and explicit["dq"][5, 5] == 0
    assert model.dq[2, 3] == 1


def test_blot_cr_takes_the_median_model_as_median(small_simulation, median_product, tmp_path):
    by_keyword, positional, by_path = (_library(small_simulation) for _ in range(3))
    _call(BlotCRStep, by_keyword, median=median_product)
    _call(BlotCRStep, positional, median_product)
    path = median_product.save(str(tmp_path / "x_med.fits"))
    _call(BlotCRStep, by_path, median=path)
    once = _state(positional, "dq")
    _assert_same(_state(by_keyword, "dq"), once)
    _assert_same(_state(by_path, "dq"), once)
    with pytest.raises(TypeError, match="either"):
        _call(BlotCRStep, _library(small_simulation), median_product, median=median_product)


def test_every_step_documents_what_process_takes_and_returns():
    from drizzlepipe.pipelines import DrizzlePipeline

    for cls in (StaticMaskStep, SkySubStep, DrizSeparateStep, CreateMedianStep, BlotCRStep,
                DrizFinalStep, DrizzlePipeline):  # fmt: skip
        doc = cls.process.__doc__ or ""
        assert "Parameters\n" in doc and "Returns\n" in doc, cls.__name__


def test_sky_twice_keeps_a_sky_the_input_had_subtracted(tmp_path):
    """A JWST image whose background the JWST pipeline subtracted (level 0.2): two subtracting
    calls equal one (the review of issue 16 found the file's 0.2 lost by the second)."""
    from stdatamodels.jwst import datamodels as jdm

    from fitsfactory import simple_gwcs

    paths = []
    for number, offset in enumerate((0.0, 2.5)):
        path = tmp_path / f"jw01234001001_01101_0000{number + 1}_nrcb1_cal.fits"
        make_jwst_cal(path, seed=number)
        with jdm.open(str(path)) as model:
            model.meta.observation.exposure_number = str(number + 1)
            model.meta.wcs = simple_gwcs(model.data.shape, offset=(offset, 0.0))
            model.meta.background.subtracted = True  # level 0.2 from make_jwst_cal
            model.save(str(path))
        paths.append(str(path))
    twice = ModelLibrary(paths)
    _call(SkySubStep, twice, method="localmin", subtract=True)
    _call(SkySubStep, twice, method="globalmin", subtract=True)
    once = ModelLibrary(paths)
    _call(SkySubStep, once, method="globalmin", subtract=True)
    names = ("data", "meta.background.level", "meta.background.subtracted")
    _assert_same(_state(twice, *names), _state(once, *names))
