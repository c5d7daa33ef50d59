"""Tests of the cosmic-ray science benchmark ``bench/science.py`` (its scores and standings, and
our side of its sweep), so that the numbers in docs/science.md stay meaningful."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
science = pytest.importorskip("science")  # needs psutil (test extra), as the harness tests


def _point(recall, flagged, strong=10_000, clean=1_000_000):
    return {"recall": recall, "strong": strong, "clean_flagged": flagged, "clean": clean,
            "false_flag_rate": flagged / clean}  # fmt: skip


@pytest.mark.parametrize(
    ("recall", "flagged", "expected"),
    [
        (0.99, 10, "above"),  # more recall, the same false flags
        (0.98, 5, "above"),  # the same recall, fewer false flags
        (0.98, 10, "tie"),  # the same point
        (0.979, 12, "tie"),  # within counting noise (2 sigma: 0.0028 and 6.3 pixels)
        (0.99, 30, "below"),  # more recall, but three times the false flags
        (0.97, 0, "below"),  # no false flags, but a recall 7 sigma lower
    ],
)
def test_standing_against_the_peer_point_counts_noise(recall, flagged, expected):
    assert science.standing(_point(recall, flagged), _point(0.98, 10)) == expected


def test_the_sweep_holds_astrodrizzle_defaults_and_both_families():
    points = science.sweep_points()
    assert points[science.default_index(points)] == ("3.5 3", "1.2 0.7")
    assert len(set(points)) == len(points)
    families = {science.family(point) for point in points}
    assert families == {"scaled", "second pass 2", "second pass 2.5"}


def test_score_counts_each_pixel_class():
    strong = np.zeros((4, 4), bool)
    strong[0, :2] = True
    clean = np.zeros((4, 4), bool)
    clean[2:, :] = True
    star = np.zeros((4, 4), bool)
    star[3, :2] = True
    flags = np.zeros((4, 4), bool)
    flags[0, 0] = flags[3, 0] = flags[2, 3] = True
    counts = science.score({"a": flags}, {"a": science.ChipTruth(strong, clean, star)})
    assert (counts["found"], counts["strong"]) == (1, 2)
    assert (counts["clean_flagged"], counts["clean"]) == (2, 8)
    assert (counts["star_flagged"], counts["star"]) == (1, 2)
    assert counts["recall"] == 0.5 and counts["false_flag_rate"] == 0.25


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from drizzlepipe.simulator import simulate

    return simulate(tmp_path_factory.mktemp("science"), exposures=3, shape=(160, 160), chips=1,
                    seed=3, write_models=False)  # fmt: skip


def test_our_sweep_trades_recall_for_false_flags_against_the_truth(tiny_set):
    # Lower thresholds find at least the cosmic rays higher ones find (same median, same
    # library: BlotCR is repeatable) and flag at least as many clean pixels.
    _, steps = science.drizzlepipe_parameters(tiny_set)
    points = [("2.5 2", "1.2 0.7"), ("5 4", "1.2 0.7")]
    masks, default_masks, final = science.run_drizzlepipe_sweep(tiny_set, points, steps)
    truths = science.chip_truths(tiny_set)
    low, high = (science.score(m, truths) for m in masks)
    assert low["found"] >= high["found"] and low["clean_flagged"] >= high["clean_flagged"]
    assert low["strong"] > 100  # the set has cosmic rays to find
    assert science.score(default_masks, truths)["recall"] > 0.9
    assert final.data.shape[0] > 100
