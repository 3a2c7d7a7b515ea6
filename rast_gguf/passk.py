"""pass@k with the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"): with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), the
chance that k samples drawn without replacement from the n hold at least one correct one. Computed
as a running product, so large n neither overflows nor loses precision. The mean over problems is
the dataset's pass@k.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """The dataset's pass@k: the mean over problems, each with n samples and correct_counts[i] correct."""
    if not correct_counts:
        raise ValueError("pass@k of an empty dataset")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself): the k values reported for n samples."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]
