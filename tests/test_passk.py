"""pass@k against a brute-force count over all k-subsets of the n samples."""

import itertools
import random

import pytest

from rast_gguf.passk import ks_for, mean_pass_at_k, pass_at_k


def brute_force(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_pass_at_1_is_the_correct_share():
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)


def test_large_n_stays_finite_and_monotone():
    values = [pass_at_k(1000, 3, k) for k in (1, 10, 100, 500)]
    assert values == sorted(values) and 0 < values[0] < values[-1] < 1


def test_dataset_mean():
    rng = random.Random(0)
    counts = [rng.randrange(9) for _ in range(20)]
    want = sum(brute_force(8, c, 3) for c in counts) / len(counts)
    assert mean_pass_at_k(counts, 8, 3) == pytest.approx(want)


def test_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_ks_for():
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(10) == [1, 2, 4, 8, 10]
    assert ks_for(1) == [1]
