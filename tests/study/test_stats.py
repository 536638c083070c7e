"""The study's statistics against hand-computed cases and brute-force enumeration of every resample."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pointdr2.study.stats import Interval, bootstrap_paired, decide, mean_std, miou_from_sums


def test_decision_rule_on_hand_made_intervals():
    assert decide(Interval(0.1, -0.6, 0.9)) == "equivalent"
    assert decide(Interval(-2.5, -3.0, -1.2)) == "not equivalent"
    assert decide(Interval(2.0, 1.01, 3.0)) == "not equivalent"
    assert decide(Interval(-0.5, -1.4, 0.3)) == "undecided"  # overlaps the margin
    assert decide(Interval(0.0, -1.0, 0.5)) == "undecided"   # touching -1 is not inside
    assert decide(Interval(0.3, -0.2, 0.8), margin=0.5) == "undecided"
    with pytest.raises(ValueError, match="margin"):
        decide(Interval(0, 0, 0), margin=0)


def test_one_seed_two_items_matches_the_exact_bootstrap_distribution():
    # a - b per item: +1 object correct only in a (item 0), 0 for item 1 (both correct)
    a = np.array([[1, 1]])
    b = np.array([[0, 1]])
    # resampling 2 items: the mean difference is 100 (p=1/4), 50 (1/2) or 0 (1/4): 2.5/97.5 percentiles 0, 100
    iv = bootstrap_paired(a, b, replicates=4000, seed=1)
    assert iv.estimate == pytest.approx(50.0)
    assert iv.low == pytest.approx(0.0) and iv.high == pytest.approx(100.0)


def test_two_level_bootstrap_matches_brute_force_enumeration():
    """Every equally likely (seeds, items) resample enumerated: the Monte Carlo percentiles must agree."""
    a = np.array([[1, 0, 1], [1, 1, 0]])
    b = np.array([[0, 0, 1], [1, 0, 0]])
    s, j = a.shape
    values = []
    for seeds in itertools.product(range(s), repeat=s):
        for items in itertools.product(range(j), repeat=j):
            ra = a[list(seeds)][:, list(items)].mean(axis=1)
            rb = b[list(seeds)][:, list(items)].mean(axis=1)
            values.append(100.0 * (ra.mean() - rb.mean()))
    exact_lo, exact_hi = np.percentile(values, [2.5, 97.5])
    iv = bootstrap_paired(a, b, replicates=20000, seed=0)
    assert iv.estimate == pytest.approx(100.0 * (a.mean() - b.mean()))
    assert abs(iv.low - exact_lo) <= 100.0 / 6 + 1e-9 and abs(iv.high - exact_hi) <= 100.0 / 6 + 1e-9
    # the pairing matters: the same data unpaired (b's items shuffled) gives a wider interval
    wide = bootstrap_paired(a, b[:, ::-1], replicates=4000, seed=0)
    assert (wide.high - wide.low) >= (iv.high - iv.low)


def test_identical_modes_give_a_zero_interval():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 50)) < 0.8).astype(np.int64)
    iv = bootstrap_paired(a, a.copy(), replicates=200)
    assert iv.estimate == 0.0 and iv.low == 0.0 and iv.high == 0.0
    assert decide(iv) == "equivalent"


def test_miou_of_confusion_sums_by_hand():
    cm = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])  # class 2 absent from truth and prediction
    # IoU_0 = 3/(4+4-3) = 0.6, IoU_1 = 2/(3+3-2) = 0.5, class 2 left out
    assert miou_from_sums(cm) == pytest.approx(55.0)
    # per-room confusion: the bootstrap sums rooms first, then takes the mIoU
    rooms_a = np.stack([np.diag([5, 5]), np.array([[4, 1], [0, 5]])])[None]
    rooms_b = np.stack([np.array([[4, 1], [1, 4]]), np.array([[4, 1], [0, 5]])])[None]
    iv = bootstrap_paired(rooms_a, rooms_b, metric="miou", replicates=500)
    sa, sb = rooms_a[0].sum(0), rooms_b[0].sum(0)
    assert iv.estimate == pytest.approx(float(miou_from_sums(sa) - miou_from_sums(sb)))
    assert iv.low <= iv.estimate <= iv.high


def test_bad_shapes_and_mean_std():
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_paired(np.zeros((2, 3)), np.zeros((3, 3)))
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert mean_std([4.0]) == (4.0, 0.0)
