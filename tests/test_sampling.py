"""The NCE noise sampler (alias method): draws follow the train feature frequencies (chi-square
on millions of draws against the real ML-100K table and a Zipf table, and a wrong table must be
rejected, so the test can fail), zero-count ids never come out, seeded draws repeat, the table
survives .to() / state_dict, bad counts are refused."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from flip_dist.models.sampling import AliasSampler, build_alias_table

N_DRAWS = 4_000_000


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; bins with expected < min_expected are pooled
    (sorted by expected, in groups of >= min_expected) so the chi-square law holds.
    p = Q(df/2, stat/2), the regularised upper incomplete gamma, via torch (no scipy needed)."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert observed.shape == expected.shape
    if observed[expected == 0].sum() > 0:
        return 0.0  # an outcome of probability zero was seen
    big = expected >= min_expected
    obs, exp = [observed[big]], [expected[big]]
    low = np.flatnonzero(~big & (expected > 0))
    if low.size:
        order = low[np.argsort(expected[low], kind="stable")]
        group = (np.cumsum(expected[order]) // min_expected).astype(np.int64)
        if group.max() > 0:  # fold the last, short group into the one before
            group = np.minimum(group, group.max() - 1)
        obs.append(np.bincount(group, weights=observed[order]))
        exp.append(np.bincount(group, weights=expected[order]))
    o, e = np.concatenate(obs), np.concatenate(exp)
    stat = float(((o - e) ** 2 / e).sum())
    df = o.size - 1
    p = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                torch.tensor(stat / 2, dtype=torch.float64))
    return float(p)


def draw_histogram(sampler: AliasSampler, n: int, seed: int) -> np.ndarray:
    ids = sampler.sample((n,), generator=torch.Generator().manual_seed(seed))
    return np.bincount(ids.numpy(), minlength=sampler.num_outcomes)


def zipf_counts(m: int = 50_000, s: float = 1.1, seed: int = 3) -> np.ndarray:
    """Integer Zipf-like counts in shuffled id order, with some zero-count ids mixed in."""
    rng = np.random.default_rng(seed)
    counts = np.floor(1e7 / np.arange(1, m + 1) ** s).astype(np.int64)
    counts[rng.choice(m, m // 50, replace=False)] = 0
    return counts[rng.permutation(m)]


@pytest.fixture(scope="module")
def ml_counts(ml100k_processed: Path) -> np.ndarray:
    counts = np.load(ml100k_processed / "feature_counts.npy")
    assert counts.ndim == 1 and (counts == 0).any() and counts.sum() > 0
    return counts


def implied_prob(threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The distribution an alias table draws from: own share plus the shares aliased in."""
    m = threshold.size
    return (threshold + np.bincount(alias, weights=1.0 - threshold, minlength=m)) / m


@pytest.mark.parametrize("kind", ["ml100k", "zipf", "random", "float"])
def test_table_reproduces_the_distribution_exactly(kind: str, request) -> None:
    rng = np.random.default_rng(0)
    counts = {"ml100k": lambda: request.getfixturevalue("ml_counts"), "zipf": zipf_counts,
              "random": lambda: rng.integers(0, 4, 10_000),
              "float": lambda: rng.random(10_000) ** 4}[kind]()
    q, threshold, alias = build_alias_table(counts)
    np.testing.assert_allclose(q, counts / counts.sum(), rtol=1e-12)
    assert (threshold >= 0).all() and (threshold <= 1).all()
    np.testing.assert_allclose(implied_prob(threshold, alias), q, rtol=1e-9, atol=0)
    # what is stored on the module (float32 threshold) is still right to float32 precision
    s = AliasSampler(counts)
    np.testing.assert_allclose(implied_prob(s.threshold.double().numpy(), s.alias.numpy()), q,
                               rtol=1e-5, atol=1e-12)


def test_chi_square_real_ml100k_frequencies(ml_counts: np.ndarray) -> None:
    sampler = AliasSampler(ml_counts)
    hist = draw_histogram(sampler, N_DRAWS, seed=1234)
    expected = ml_counts / ml_counts.sum() * N_DRAWS
    p = chi2_pvalue(hist, expected)
    assert p > 1e-3, f"draws do not follow the ML-100K feature frequencies (p = {p:.3g})"
    # the test has power: the same draws against wrong tables are rejected
    uniform = np.full(ml_counts.size, N_DRAWS / ml_counts.size)
    assert chi2_pvalue(hist, uniform) < 1e-6
    nz = np.flatnonzero(ml_counts)
    shuffled = ml_counts.copy()
    shuffled[nz] = ml_counts[nz][np.random.default_rng(0).permutation(nz.size)]
    assert chi2_pvalue(hist, shuffled / shuffled.sum() * N_DRAWS) < 1e-6
    smoothed = ml_counts + 5  # add-5 smoothing of the real table: a subtle error
    assert chi2_pvalue(hist, smoothed / smoothed.sum() * N_DRAWS) < 1e-6


def test_chi_square_zipf() -> None:
    counts = zipf_counts()
    hist = draw_histogram(AliasSampler(counts), N_DRAWS, seed=99)
    p = chi2_pvalue(hist, counts / counts.sum() * N_DRAWS)
    assert p > 1e-3, f"draws do not follow the Zipf table (p = {p:.3g})"
    flat = np.sqrt(counts)  # a flatter Zipf: wrong tail mass
    assert chi2_pvalue(hist, flat / flat.sum() * N_DRAWS) < 1e-6


def test_zero_count_ids_never_drawn(ml_counts: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    sparse = rng.integers(1, 1000, 20_000)
    sparse[::2] = 0  # every other id unused, plus a few very heavy ones
    sparse[rng.choice(20_000, 5)] = 10**7
    for counts in (ml_counts, sparse, np.array([0, 0, 3, 0])):
        sampler = AliasSampler(counts)
        ids = sampler.sample((2_000_000,), generator=torch.Generator().manual_seed(5))
        zero = torch.from_numpy(np.flatnonzero(counts == 0))
        assert not torch.isin(ids, zero).any()
        assert (sampler.threshold[zero] == 0).all()
        assert not torch.isin(sampler.alias, zero).any()


def test_seeded_draws_repeat(ml_counts: np.ndarray) -> None:
    s = AliasSampler(ml_counts)
    a = s.sample((25, 1024), generator=torch.Generator().manual_seed(42))
    b = s.sample((25, 1024), generator=torch.Generator().manual_seed(42))
    c = s.sample((25, 1024), generator=torch.Generator().manual_seed(43))
    assert a.shape == (25, 1024) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < s.num_outcomes
    torch.manual_seed(11)
    d = s.sample(1000)
    torch.manual_seed(11)
    assert d.shape == (1000,) and torch.equal(d, s.sample(1000))  # global RNG without generator
    assert s.sample((0, 25)).shape == (0, 25)


def test_log_prob(ml_counts: np.ndarray) -> None:
    s = AliasSampler(ml_counts)
    ids = torch.arange(s.num_outcomes).reshape(-1, 1)
    with np.errstate(divide="ignore"):
        want = np.log(ml_counts / ml_counts.sum())
    got = s.log_prob(ids)
    assert got.shape == ids.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.squeeze(1).numpy(), want.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(s.log_prob(ids, dtype=torch.float64).squeeze(1).numpy(), want)
    assert torch.isneginf(got[torch.from_numpy(ml_counts == 0)]).all()
    assert s.prob.dtype == torch.float64 and abs(float(s.prob.sum()) - 1) < 1e-12


def test_to_and_state_dict_round_trip(ml_counts: np.ndarray) -> None:
    s = AliasSampler(ml_counts)
    assert {k: v.dtype for k, v in s.state_dict().items()} == {
        "prob": torch.float64, "threshold": torch.float32, "alias": torch.int64}
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    other = AliasSampler(np.ones(ml_counts.size))  # a different table of the same size
    other.load_state_dict(torch.load(buf, weights_only=True))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(s.sample((4096,), g()), other.sample((4096,), g()))
    # moved with a model: device moves follow, dtype casts (bf16 models) do not touch the table
    holder = torch.nn.Sequential(torch.nn.Linear(2, 2))
    holder.noise = s
    holder.to(torch.bfloat16).to("cpu").half()
    assert s.threshold.dtype == torch.float32 and s.prob.dtype == torch.float64
    assert holder[0].weight.dtype == torch.float16
    assert torch.equal(s.sample((4096,), g()), other.sample((4096,), g()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_gpu(ml_counts: np.ndarray) -> None:
    s = AliasSampler(ml_counts, device="cuda")
    assert s.alias.is_cuda and s.threshold.is_cuda and s.prob.is_cuda
    moved = AliasSampler(ml_counts).to("cuda")
    g = lambda: torch.Generator(device="cuda").manual_seed(8)  # noqa: E731
    a = s.sample((N_DRAWS,), g())
    assert a.is_cuda and torch.equal(a, moved.sample((N_DRAWS,), g()))
    hist = np.bincount(a.cpu().numpy(), minlength=s.num_outcomes)
    assert chi2_pvalue(hist, ml_counts / ml_counts.sum() * N_DRAWS) > 1e-3
    assert hist[ml_counts == 0].sum() == 0
    ids = torch.arange(s.num_outcomes, device="cuda")
    assert torch.equal(s.log_prob(ids).cpu(), AliasSampler(ml_counts).log_prob(ids.cpu()))


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5), "all counts are zero"),
    (np.array([1, -2, 3]), "negative"),
    (np.array([]), "empty"),
    (np.ones((2, 3)), "1-D"),
    (np.array([1.0, np.nan]), "not finite"),
    (np.array([1.0, np.inf]), "not finite"),
    (np.array([True, False]), "dtype"),
    (torch.tensor([0, 0]), "all counts are zero"),
])
def test_bad_counts_refused(bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AliasSampler(bad)


def test_accepts_torch_and_lists() -> None:
    for counts in (torch.tensor([1, 3, 0]), [1, 3, 0], np.array([1, 3, 0], dtype=np.int32)):
        s = AliasSampler(counts)
        assert s.num_outcomes == 3
        np.testing.assert_allclose(s.prob.numpy(), [0.25, 0.75, 0.0])
