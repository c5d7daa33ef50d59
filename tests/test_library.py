"""Step inputs: single file, list, glob, @file and association JSON become a ModelLibrary."""

from __future__ import annotations

import json

import numpy as np
import pytest

import drizzlepipe.datamodels as dm
from drizzlepipe.datamodels import ModelLibrary
from fitsfactory import make_hst_flt, make_plain_fits


@pytest.fixture
def exposures(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"jexp0{i}aq_flt.fits"
        make_hst_flt(path, chips=2, rootname=f"jexp0{i}aq", seed=i)
        paths.append(path)
    return paths


def _chips(library):
    with library:
        out = []
        for index in range(len(library)):
            model = library.borrow(index)
            out.append((model.meta.group_id, model.meta.chip, float(model.data[0, 0])))
            library.shelve(model, index, modify=False)
    return out


def test_every_input_form_gives_the_same_chips(tmp_path, exposures):
    listfile = tmp_path / "inputs.lst"
    listfile.write_text("# my exposures\n" + "\n".join(p.name for p in exposures) + "\n")
    asn = {
        "asn_id": "test",
        "products": [
            {
                "name": "mymosaic",
                "members": [{"expname": p.name, "exptype": "science"} for p in exposures]
                + [{"expname": "jbackground_flt.fits", "exptype": "background"}],
            }
        ],
    }
    asn_path = tmp_path / "asn.json"
    asn_path.write_text(json.dumps(asn))
    forms = [
        [str(p) for p in exposures],
        str(tmp_path / "jexp*_flt.fits"),
        f"@{listfile}",
        str(asn_path),
    ]
    results = [_chips(ModelLibrary(form)) for form in forms]
    assert len(results[0]) == 6  # 3 exposures x 2 chips
    for result in results[1:]:
        assert result == results[0]
    library = ModelLibrary(str(asn_path))
    assert library.product_name == "mymosaic"
    # Chips of one exposure share a group; exposures are separate groups.
    assert library.group_indices == {"jexp00aq": [0, 1], "jexp01aq": [2, 3], "jexp02aq": [4, 5]}


def test_single_file_and_list_of_models(tmp_path, exposures):
    library = ModelLibrary(str(exposures[0]))
    assert len(library) == 2
    models = dm.open(exposures[1]) + [dm.open(exposures[2])]
    library = ModelLibrary(models)
    assert len(library) == 4
    assert sorted(library.group_names) == ["jexp01aq", "jexp02aq"]


def test_plain_fits_members_get_their_own_groups(tmp_path):
    paths = []
    for name in ("a.fits", "b.fits"):
        make_plain_fits(tmp_path / name)
        paths.append(tmp_path / name)
    library = ModelLibrary([str(p) for p in paths])
    assert library.group_indices == {"a": [0], "b": [1]}


def test_on_disk_library_keeps_changes_in_temporary_files_not_inputs(tmp_path, exposures):
    original = exposures[0].read_bytes()
    library = ModelLibrary(
        [str(p) for p in exposures], on_disk=True, temp_directory=tmp_path / "scratch"
    )
    (tmp_path / "scratch").mkdir()
    with library:
        model = library.borrow(0)
        model.data[0, 0] = -12345.0
        model.dq[1, 1] = 4096
        library.shelve(model, 0, modify=True)
    with library:
        model = library.borrow(0)
        assert model.data[0, 0] == -12345.0 and model.dq[1, 1] == 4096
        library.shelve(model, 0, modify=False)
    assert exposures[0].read_bytes() == original
    saved = list((tmp_path / "scratch").rglob("*.asdf"))
    assert len(saved) == 1 and np.all(np.isfinite(dm.open(saved[0]).data))


def test_on_disk_library_saves_only_the_state_of_chips_whose_pixels_are_unchanged(
    tmp_path, exposures
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    original = exposures[0].read_bytes()
    library = ModelLibrary([str(p) for p in exposures], on_disk=True, temp_directory=scratch)
    with library:
        model = library.borrow(1)  # exposure 0, chip 2
        data = model.data.copy()
        sky_position = model.meta.wcs.pixel_to_world_values(10.0, 20.0)
        model.dq[2, 3] |= 4096
        model.static_mask = np.zeros(model.data.shape, np.uint8)
        model.static_mask[4, 5] = 1
        model.meta.background.level = 12.5
        model.meta.group_id = "renamed"
        library.shelve(model, 1, modify=True)
    (state,) = scratch.rglob("*.asdf")
    assert state.name.endswith(".state.asdf")
    state_size = state.stat().st_size

    def check(again):
        np.testing.assert_array_equal(again.data, data)  # read from the input file
        assert again.dq[2, 3] & 4096 and again.static_mask.sum() == 1
        assert again.static_mask[4, 5] == 1
        assert again.meta.background.level == 12.5 and again.meta.group_id == "renamed"
        assert again.meta.filename == exposures[0].name
        pixel = again.meta.wcs.world_to_pixel_values(*sky_position)
        np.testing.assert_allclose(pixel, (10.0, 20.0), atol=1e-6)

    with library:
        again = library.borrow(1)
        check(again)
        library.shelve(again, 1, modify=False)
    check(library.member_ref(1).get())  # what a worker process opens
    # changed pixels need the whole chip: a full copy replaces the state file
    with library:
        model = library.borrow(1)
        model.data[0, 0] += 1.0
        library.shelve(model, 1, modify=True)
    (full,) = scratch.rglob("*.asdf")
    assert not full.name.endswith(".state.asdf")
    assert state_size < full.stat().st_size / 3  # metadata and compressed masks only
    with library:
        model = library.borrow(1)
        assert model.data[0, 0] == data[0, 0] + 1.0 and model.static_mask[4, 5] == 1
        library.shelve(model, 1, modify=False)
    assert exposures[0].read_bytes() == original


def test_in_memory_chips_keep_their_state_and_read_their_pixels_from_the_file(tmp_path, exposures):
    # the library holds each chip's state (metadata, DQ); the pixels (SCI, ERR) are read
    # from the file when used, equal to a fresh read, read-only, and let go when the chip is
    # shelved; an array a step assigns instead stays
    fresh = dm.open(str(exposures[1]) + "[SCI,2]")
    library = ModelLibrary([str(p) for p in exposures])
    library.preload()
    with library:
        model = library.borrow(3)
        assert "data" not in model._instance and "err" not in model._instance
        assert model.shape == fresh.data.shape  # known without reading the pixels
        np.testing.assert_array_equal(model.data, fresh.data)  # read on first use
        np.testing.assert_array_equal(model.err, fresh.err)
        with pytest.raises(ValueError, match="read-only"):
            model.data[0, 0] = 1.0
        model.dq[2, 3] = 8  # the state is the library's own, writable
        library.shelve(model, 3)
        model = library.borrow(3)
        assert "data" not in model._instance and model.dq[2, 3] == 8
        model.data = model.data + np.float32(1.0)  # assigned: kept, the file no longer read
        library.shelve(model, 3)
        model = library.borrow(3)
        np.testing.assert_array_equal(model.data, fresh.data + np.float32(1.0))
        np.testing.assert_array_equal(model.err, fresh.err)
        library.shelve(model, 3, modify=False)
    with library:
        model = library.borrow(0)
        saved = tmp_path / "chip.fits"
        model.save(str(saved))  # the pixels are read for the file
        library.shelve(model, 0, modify=False)
    expected = dm.open(str(exposures[0]) + "[SCI,1]").data
    np.testing.assert_array_equal(dm.open(str(saved)).data, expected)


def test_an_input_changed_during_the_run_is_refused_not_read_again(tmp_path, exposures):
    from drizzlepipe.exceptions import DrizzlepipeInputError

    library = ModelLibrary([str(p) for p in exposures])
    library.preload()
    make_hst_flt(exposures[2], chips=2, rootname="jexp02aq", seed=99)  # rewritten meanwhile
    with library:
        model = library.borrow(4)
        with pytest.raises(DrizzlepipeInputError, match="changed during the run"):
            model.data  # noqa: B018 - reading the pixels
        library.shelve(model, 4, modify=False)


def test_rows_of_a_chip_are_read_alone_and_equal_the_whole_read(tmp_path, exposures):
    # pixel_rows reads a band of rows from the file (nothing kept in the model) with the values
    # the whole read gives; a constant ERR (PIXVALUE, no data) is expanded for the rows only
    from astropy.io import fits

    from drizzlepipe.datamodels.pixels import pixel_rows

    library = ModelLibrary([str(p) for p in exposures])
    library.preload()
    rows = slice(5, 17)
    with library:
        model = library.borrow(3)
        band = pixel_rows(model, "data", rows)
        assert "data" not in model._instance  # not loaded by the band
        assert band.shape == (12, model.shape[1]) and not band.flags.writeable
        np.testing.assert_array_equal(band, model.data[rows])  # the whole read, same values
        np.testing.assert_array_equal(pixel_rows(model, "err", rows), model.err[rows])
        np.testing.assert_array_equal(pixel_rows(model, "data", rows), model.data[rows])  # held
        library.shelve(model, 3, modify=False)
    constant = tmp_path / "jconst1aq_flt.fits"
    make_hst_flt(constant, chips=1, rootname="jconst1aq")
    with fits.open(constant) as hdulist:  # ERR as HST stores a constant one: no data
        err = fits.ImageHDU(None, name="ERR", ver=1)
        err.header.update(NPIX1=50, NPIX2=40, PIXVALUE=2.5)
        hdus = [hdu.copy() if hdu.name != "ERR" else err for hdu in hdulist]
    fits.HDUList(hdus).writeto(constant, overwrite=True)
    chip = ModelLibrary([str(constant)])
    chip.preload()
    with chip:
        model = chip.borrow(0)
        band = pixel_rows(model, "err", rows)
        np.testing.assert_array_equal(band, np.full((12, 50), 2.5, np.float32))
        chip.shelve(model, 0, modify=False)


@pytest.mark.parametrize(
    "case, usable",
    [
        ("normal", True),
        ("nan_first_rows", True),
        ("flagged_first_rows", True),
        ("all_nan", False),
        ("flagged", False),
    ],
)
def test_usable_pixel_screen_reads_the_first_rows_then_the_whole_chip(tmp_path, case, usable):
    # a chip whose first rows are NaN or flagged is still found usable by a pixel further
    # down; one with no finite pixel, or all its finite pixels flagged, is not; a normal chip
    # is screened without reading the whole of it
    from astropy.io import fits

    from drizzlepipe.datamodels.conversions import has_usable_chip_pixel

    path = tmp_path / "jscrn1aq_flt.fits"
    make_hst_flt(path, chips=1, shape=(200, 30), rootname="jscrn1aq")
    with fits.open(path, mode="update") as hdulist:
        sci = hdulist["SCI", 1].data
        if case == "nan_first_rows":
            sci[:150] = np.nan
        elif case == "flagged_first_rows":
            hdulist["DQ", 1].data[:150] = 32
        elif case == "all_nan":
            sci[:] = np.nan
        elif case == "flagged":
            sci[:199] = np.nan
            hdulist["DQ", 1].data[199] = 32
    library = ModelLibrary([str(path)])
    library.preload()
    with library:
        model = library.borrow(0)
        assert has_usable_chip_pixel(model, bad_bits=32) is usable
        if case == "normal":
            assert "data" not in model._instance  # the first rows only were read
        library.shelve(model, 0, modify=False)


def test_chip_array_stand_in_reads_on_use_with_numpys_copy_rules(exposures):
    # a stand-in knows its shape without reading; numpy's asarray gives the chip's read-only
    # pixels, array() a writable copy, a dtype a converted copy
    library = ModelLibrary([str(p) for p in exposures])
    library.preload()
    reads = []

    def read(model):
        reads.append(model.meta.chip)
        return library.kept(model.data)

    with library:
        stand_in = library.chip_array(3, read, library.chip_info(3).shape)
        assert stand_in.shape == (40, 50) and stand_in.ndim == 2 and reads == []
        viewed = np.asarray(stand_in)
        assert not viewed.flags.writeable and reads == [2]
        copied = np.array(stand_in)
        assert copied.flags.writeable
        np.testing.assert_array_equal(copied, viewed)
        assert np.asarray(stand_in, dtype=np.float64).dtype == np.float64
        model = library.borrow(3)
        np.testing.assert_array_equal(viewed, model.data)
        library.shelve(model, 3, modify=False)
