"""nearest_code: Triton kernel (interpreter on CPU, fp32; native on GPU) against the chunked PyTorch reference and
an fp64 brute-force oracle."""

import pytest
import torch
from helpers import rel_err

from hfzoo.ops.nearest_code import code_norms, nearest_code, nearest_code_reference


def _oracle(z, c):
    """fp64 squared distances [N, K] (small sizes only)."""
    return torch.cdist(z.double().reshape(-1, z.shape[-1]), c.double()).pow(2)


def _assert_optimal(z, c, idx, rtol):
    """The chosen code's exact distance is within rtol * (|z|^2 + max|c|^2) of the exact minimum."""
    d = _oracle(z, c)
    chosen = d.gather(1, idx.reshape(-1, 1).to(d.device)).squeeze(1)
    scale = z.double().reshape(-1, z.shape[-1]).pow(2).sum(-1) + c.double().pow(2).sum(-1).max()
    gap = (chosen - d.min(1).values) / scale
    assert gap.max().item() <= rtol, gap.max().item()


@pytest.mark.parametrize("n,k,d", [(77, 53, 40), (1, 5, 16), (40, 130, 7), (33, 45, 300)])
def test_kernel_matches_reference_fp32(n, k, d):
    g = torch.Generator().manual_seed(n * 1000 + k + d)
    z, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    i_tri, d_tri = nearest_code(z, c, backend="triton", return_distance=True)
    i_ref, d_ref = nearest_code(z, c, backend="reference", return_distance=True)
    assert i_tri.dtype == torch.int64 and i_tri.shape == (n,)
    assert torch.equal(i_tri, i_ref)
    assert rel_err(d_tri, d_ref) < 1e-5
    # both agree with exact arithmetic on well-separated random data
    assert torch.equal(i_ref, _oracle(z, c).argmin(1))
    assert rel_err(d_ref, _oracle(z, c).min(1).values) < 1e-5


def test_ties_go_to_the_lowest_index_across_and_within_tiles():
    # Small-integer vectors: every product and partial sum is an exactly representable integer in fp32, so
    # copies of a code get bit-identical scores in any summation order -- real ties on any CPU.
    g = torch.Generator().manual_seed(1)
    base = torch.randint(-4, 5, (20, 24), generator=g).float()
    base[:, 0] = torch.arange(20) * 10.0  # distinct codes, far apart
    # code j and its copies at j + 20 (same 32-code tile of the interpreter) and j + 70 (a later tile)
    far = torch.randint(-4, 5, (30, 24), generator=g).float() + 50.0
    c = torch.cat([base, base, far, base])
    pick = torch.randint(0, 20, (50,), generator=g)
    z = base[pick] + torch.randint(-1, 2, (50, 24), generator=g).float()  # near their code, integer offsets
    d = (z.double()[:, None] - c.double()[None]).pow(2).sum(-1)  # exact integers
    want = d.argmin(1)
    assert torch.equal(want, pick)  # the nearest code is the first copy of the one z was drawn from
    assert torch.equal(d[:, :20], d[:, 20:40]) and torch.equal(d[:, :20], d[:, 70:90])  # exact ties
    for backend in ("triton", "reference"):
        got, dist = nearest_code(z, c, backend=backend, return_distance=True)
        assert torch.equal(got, want), backend
        assert torch.equal(dist.double(), d.min(1).values), backend  # integer distances: exact
    # identical vectors equidistant to two different codes: exact ties in float, still the lowest index
    c2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]).repeat(1, 8)
    z2 = torch.zeros(3, 16)
    for backend in ("triton", "reference"):
        assert nearest_code(z2, c2, backend=backend).tolist() == [0, 0, 0], backend


def test_distance_optimality_on_near_ties():
    # many nearly equidistant codes: indices may legitimately differ, but the chosen distance must be minimal
    g = torch.Generator().manual_seed(2)
    c = torch.nn.functional.normalize(torch.randn(96, 32, generator=g), dim=-1)
    z = 1e-3 * torch.randn(64, 32, generator=g)
    for backend in ("triton", "reference"):
        _assert_optimal(z, c, nearest_code(z, c, backend=backend), rtol=1e-6)


def test_leading_dims_and_chunked_reference():
    g = torch.Generator().manual_seed(3)
    z, c = torch.randn(2, 3, 5, 16, generator=g), torch.randn(37, 16, generator=g)
    idx = nearest_code(z, c, backend="triton")
    assert idx.shape == (2, 3, 5)
    i_small, _ = nearest_code_reference(z.reshape(-1, 16), c, chunk_elements=40)  # one row per chunk
    assert torch.equal(idx.reshape(-1), i_small)


def test_code_norms_are_squared_lengths_in_fp32():
    c = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 2.0]], dtype=torch.bfloat16)
    n = code_norms(c)
    assert n.dtype == torch.float32 and n.tolist() == [25.0, 0.0, 5.0]
    g = torch.Generator().manual_seed(5)
    c = torch.randn(37, 19, generator=g)
    assert rel_err(code_norms(c), c.double().norm(dim=1).pow(2)) < 1e-6


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_nan_codes_are_never_chosen_and_nan_vectors_get_index_0(backend):
    g = torch.Generator().manual_seed(6)
    c = torch.randn(40, 16, generator=g)
    z = c[[5, 33, 2]] + 0.01 * torch.randn(3, 16, generator=g)
    c[5, 3] = float("nan")     # the nearest code of z[0] is poisoned: the next nearest wins
    z[2, 0] = float("nan")
    idx, dist = nearest_code(z, c, backend=backend, return_distance=True)
    clean = torch.cat([c[:5], c[6:]])
    second = _oracle(z[:1], clean).argmin(1).item()
    assert idx.tolist() == [second + (second >= 5), 33, 0]
    assert torch.isfinite(dist[:2]).all() and torch.isnan(dist[2])


def test_reference_handles_half_precision_inputs_in_fp32():
    g = torch.Generator().manual_seed(4)
    z, c = torch.randn(30, 16, generator=g).bfloat16(), torch.randn(50, 16, generator=g).bfloat16()
    idx = nearest_code(z, c, backend="reference")
    assert torch.equal(idx, _oracle(z.float(), c.float()).argmin(1))


def test_bad_inputs_name_the_argument():
    z, c = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="last dimension"):
        nearest_code(torch.randn(4, 7), c)
    with pytest.raises(ValueError, match="codebook"):
        nearest_code(z, torch.randn(6))
    with pytest.raises(TypeError, match="same dtype"):
        nearest_code(z, c.double().float().half())
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        nearest_code(z.long(), c.long())
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        nearest_code(z.double(), c.double())
    with pytest.raises(ValueError, match="precision"):
        nearest_code(z, c, precision="fp64")
    with pytest.raises(ValueError, match="at least one code"):
        nearest_code(z, torch.randn(0, 8))


# ---------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "exact"])
def test_gpu_fp32_matches_reference(precision):
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(5000, 128, device="cuda", generator=g)
    c = torch.randn(3001, 128, device="cuda", generator=g) / 128 ** 0.5
    i_tri, d_tri = nearest_code(z, c, precision=precision, return_distance=True, backend="triton")
    i_ref, d_ref = nearest_code(z, c, return_distance=True, backend="reference")
    agree = (i_tri == i_ref).float().mean().item()
    assert agree >= 0.999, agree
    assert rel_err(d_tri, d_ref) < 1e-5
    _assert_optimal(z[:1000].cpu(), c.cpu(), i_tri[:1000].cpu(), rtol=1e-6)
    if precision == "exact":
        assert torch.equal(i_tri, nearest_code(z, c, precision="exact", backend="reference"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_inputs_match_fp32_reference_of_the_same_values(dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randn(4096, 128, device="cuda", generator=g).to(dtype)
    c = (torch.randn(2048, 128, device="cuda", generator=g) / 128 ** 0.5).to(dtype)
    i_tri = nearest_code(z, c, backend="triton")
    i_ref = nearest_code(z, c, backend="reference")  # upcasts to fp32: exact products, fp32 sums
    agree = (i_tri == i_ref).float().mean().item()
    assert agree >= 0.999, agree
    _assert_optimal(z[:1000].float().cpu(), c.float().cpu(), i_tri[:1000].cpu(), rtol=1e-6)


@pytest.mark.gpu
def test_gpu_wide_rows_and_ties():
    g = torch.Generator(device="cuda").manual_seed(2)
    base = torch.randn(300, 300, device="cuda", generator=g)
    c = torch.cat([base, base, base])  # copies in later tiles: the first copy must win
    z = base[torch.randint(0, 300, (999,), device="cuda", generator=g)] + 0.01 * torch.randn(999, 300, device="cuda",
                                                                                             generator=g)
    want = nearest_code(z, base, backend="reference")
    assert torch.equal(nearest_code(z, c, precision="ieee", backend="triton"), want)
    assert torch.equal(nearest_code(z, c, backend="triton"), want)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "exact"])
def test_gpu_ties_within_a_tile_go_to_the_lowest_index(precision):
    # Triton's interpreter always breaks ties to the left, so only the GPU checks the kernel's within-tile rule:
    # each code twice in a row (same tile), small integers (exact scores): the even copy must win
    g = torch.Generator(device="cuda").manual_seed(3)
    base = torch.randint(-4, 5, (200, 64), device="cuda", generator=g).float()
    base[:, 0] = torch.arange(200, device="cuda") * 10.0
    c = base.repeat_interleave(2, dim=0)
    pick = torch.randint(0, 200, (500,), device="cuda", generator=g)
    z = base[pick] + torch.randint(-1, 2, (500, 64), device="cuda", generator=g).float()
    assert torch.equal(nearest_code(z, c, precision=precision, backend="triton"), 2 * pick)


# ---------------------------------------------------------------------------------------------------- exact mode


def _adversarial_near_ties(n, k, d, seed):
    """Codes in pairs whose exact distances to z differ by a few fp32 units in the last place of one coordinate:
    fp32 scores cannot order them, fp64 can. The nearer twin sits at the lower index for half the pairs."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(k, d, generator=g)
    pick = torch.randint(0, k // 2, (n,), generator=g)
    c[k // 2:] = c[:k // 2]
    c[k // 2:, 0] = torch.nextafter(c[:k // 2, 0], torch.full_like(c[:k // 2, 0], float("inf")))  # +1 ulp
    z = c[pick] + 1e-3 * torch.randn(n, d, generator=g)
    return z, c


def _oracle_argmin(z, c):
    """Exact argmin (lowest index on exact ties) from fp64 squared differences of the fp32 values."""
    return ((z.double()[:, None] - c.double()[None]) ** 2).sum(-1).argmin(1)


def _overlap(on: bool):
    """Launch settings that run the scores passes with or without OVERLAP (next tile's dot issued early)."""
    from hfzoo.ops.launch import tuning

    conf = {"configs": [{"BLOCK_M": 32, "BLOCK_K": 32, "OVERLAP": on}]}
    return tuning({"nearest_code.candidates": conf, "nearest_code.fwd_fp32": conf})


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("n,k,d", [(45, 70, 33), (64, 96, 16), (20, 30, 8)])
def test_exact_mode_equals_the_exact_argmin_on_adversarial_near_ties(n, k, d, overlap):
    with _overlap(overlap):
        _check_adversarial(n, k, d)


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize("k", [30, 32, 70, 96])
def test_overlapped_scores_pass_equals_the_plain_one(precision, k):
    # K below, at and past the tile size, a multiple of it or not: the early-issued dot must cover every tile once
    g = torch.Generator().manual_seed(k)
    z, c = torch.randn(40, 16, generator=g), torch.randn(k, 16, generator=g)
    c[k // 3] = c[k // 5]  # an exact tie across tiles
    outs = []
    for on in (False, True):
        with _overlap(on):
            outs.append(nearest_code(z, c, precision=precision, backend="triton", return_distance=True))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[1][0], _oracle(z, c).argmin(1))


def _check_adversarial(n, k, d):
    z, c = _adversarial_near_ties(n, k, d, seed=n + k + d)
    want = _oracle_argmin(z, c)
    twin = torch.where(want < k // 2, want + k // 2, want - k // 2)
    dd = ((z.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    scale = z.double().pow(2).sum(1) + c.double().pow(2).sum(1).max()  # the size of the fp32 scores
    gap = (dd.gather(1, twin[:, None]) - dd.gather(1, want[:, None])).squeeze(1) / scale
    assert gap.max().item() < 2.0 ** -24 and (gap > 0).all()  # below fp32 resolution of the scores, not exact ties
    assert (want >= k // 2).any() and (want < k // 2).any()  # the nearer twin is sometimes the later index
    for backend in ("triton", "reference"):
        got, dist = nearest_code(z, c, backend=backend, return_distance=True)  # fp32 default: exact
        assert torch.equal(got, want), backend
        # distances come back as |z|^2 + score in fp32: exact up to fp32 rounding at the scale of the scores
        assert ((dist.double() - dd.min(1).values).abs() / scale).max().item() < 1e-6


def test_exact_mode_fp64_settlement_paths():
    # Force every row through the fp64 stage (a huge bound); codes in triplets of exact copies (integers), so each
    # row has 3 tied candidates; max_candidates 2 sends every row to the full fp64 scan, 16 to the candidate list.
    from hfzoo.ops.launch import count_launches, tuning

    g = torch.Generator().manual_seed(9)
    base = torch.randint(-4, 5, (30, 20), generator=g).float()
    base[:, 0] = torch.arange(30) * 10.0
    c = torch.cat([base, base, base])
    pick = torch.randint(0, 30, (41,), generator=g)
    z = base[pick] + torch.randint(-1, 2, (41, 20), generator=g).float()
    z[7, 3] = float("nan")
    want = pick.clone()
    want[7] = 0
    for maxc in (2, 16):
        with tuning({"nearest_code.exact": {"bound_scale": 1e6, "max_candidates": maxc}}), count_launches() as cnt:
            got, dist = nearest_code(z, c, backend="triton", return_distance=True)
        assert cnt["nearest_code.collect"] == 1 and cnt["nearest_code.resolve"] == 1
        assert torch.equal(got, want), maxc
        exact = ((z.double() - c.double()[want]) ** 2).sum(-1)
        assert torch.equal(dist[torch.arange(41) != 7].double(), exact[torch.arange(41) != 7])
        assert torch.isnan(dist[7])
    # a bound of the normal size settles these well-separated rows in the first pass (the list stays empty)
    with count_launches() as cnt:
        assert torch.equal(nearest_code(z, c, backend="triton"), want)
    assert cnt["nearest_code.fwd"] == 1


def test_exact_first_pass_bound_and_certified_rows():
    # the bound covers the first pass's error (safety factor 1), its flags match the certificate, and certified
    # rows already hold the exact argmin (odd sizes: rows and codes past the tiles)
    from hfzoo.ops import nearest_code as nc
    from hfzoo.ops.launch import tuning

    g = torch.Generator().manual_seed(13)
    z = torch.randn(70, 24, generator=g) * torch.rand(70, 1, generator=g) * 30
    c = torch.randn(90, 24, generator=g)
    with tuning({"nearest_code.exact": {"bound_scale": 1.0}}):
        idx, best, thr, flag, *_ = nc._exact_first_pass(z, c)
    cd = c.double()
    exact = (cd * cd).sum(1)[None, :] - 2 * z.double() @ cd.t()
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    bound = (thr.double() - best.double()) / 2
    assert ((best.double() - chosen).abs() <= bound).all()
    runner_up = exact.scatter(1, idx[:, None], float("inf")).min(1).values
    settled = flag == 0
    assert settled.any() and (~settled).any()
    assert torch.equal(idx[settled], exact.argmin(1)[settled])
    assert (runner_up[settled] > chosen[settled]).all()


def test_exact_mode_with_wide_rows_loops_over_d():
    z, c = _adversarial_near_ties(20, 40, 200, seed=4)
    assert torch.equal(nearest_code(z, c, backend="triton"), _oracle_argmin(z, c))


@pytest.mark.gpu
@pytest.mark.parametrize("candidates", ["bf16x3", "tf32"])
def test_gpu_exact_mode_on_adversarial_near_ties(candidates):
    from hfzoo.ops.launch import tuning

    z, c = _adversarial_near_ties(3000, 4096, 128, seed=11)
    z, c = z.cuda(), c.cuda()
    want = nearest_code(z, c, precision="exact", backend="reference")  # fp64
    with tuning({"nearest_code.exact": {"candidates": candidates}}):
        got = nearest_code(z, c, backend="triton")
    assert torch.equal(got, want)
    assert torch.equal(want[:100].cpu(), _oracle_argmin(z[:100].cpu(), c.cpu()))


@pytest.mark.gpu
@pytest.mark.parametrize("candidates", ["bf16x3", "tf32"])
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_gpu_score_bound_covers_the_candidate_pass_error(candidates, scale):
    # the first pass's best score must lie within the bound (safety factor 1) of its fp64 score, on data with a
    # wide spread of magnitudes; the unsettled flag must be set exactly where the runner-up is not certified
    from hfzoo.ops import nearest_code as nc
    from hfzoo.ops.launch import tuning

    g = torch.Generator(device="cuda").manual_seed(12)
    z = torch.randn(8192, 128, device="cuda", generator=g) * scale * torch.rand(8192, 1, device="cuda", generator=g)
    c = torch.randn(4096, 128, device="cuda", generator=g) * scale / 128 ** 0.5
    with tuning({"nearest_code.exact": {"candidates": candidates, "bound_scale": 1.0}}):
        idx, best, thr, flag, *_ = nc._exact_first_pass(z, c)
    exact = (c.double()[idx] ** 2).sum(1) - 2 * (z.double() * c.double()[idx]).sum(1)
    bound = (thr.double() - best.double()) / 2
    ratio = ((best.double() - exact).abs() / bound).max().item()
    print(f"{candidates} scale {scale}: worst error / bound = {ratio:.3g}, unsettled {(flag != 0).float().mean().item():.4f}")
    assert ratio <= 1.0, ratio
    # the rows the first pass certifies (flag 0) already hold the exact argmin
    settled = flag == 0
    assert settled.float().mean() > 0.5
    want = nearest_code(z, c, precision="exact", backend="reference")
    assert torch.equal(idx[settled], want[settled])
