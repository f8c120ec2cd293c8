"""LoRA-LEGO: merge LoRA adapters by clustering their rank-one units; and peft's own merges, same interface.

LoRA-LEGO (Zhao et al., "Merging LoRAs like Playing LEGO", arXiv 2409.16167) treats each rank of a LoRA as a
*Minimal Semantic Unit* (MSU): row ``a_i`` of ``A`` with column ``b_i`` of ``B``, so that
``ΔW = s·B A = Σ_i s·b_i a_iᵀ``. MSUs can be permuted within a LoRA, and concatenating two LoRAs' MSUs
(``[B₁ B₂][A₁; A₂]``) sums their updates. A merge pools the MSUs of all input adapters per target module,
clusters them into ``k`` groups with k-means, and uses each group's centroid as one rank of a rank-``k`` LoRA.

What hfzoo does, step by step, per target module (the defaults are in :class:`LegoOptions`):

1. **Units.** Each rank of each adapter becomes ``(√|s|·a_i, sign(s)·√|s|·b_i)``, its scaling ``s``
   (``alpha/r``, or ``alpha/√r`` with rsLoRA, per-module ``rank_pattern``/``alpha_pattern`` honoured) folded in,
   so adapters of different ranks and alphas pool together. With ``canonical=True`` (hfzoo's addition, not
   from the paper) each unit is rescaled to ``‖a‖ = ‖b‖`` and its sign fixed so that the largest entry of
   ``a`` is positive; neither changes ``b aᵀ``, but both make equal rank-one updates equal vectors.
2. **Clustering.** Deterministic k-means (k-means++ seeding from ``seed``, Lloyd iterations until the
   assignment stops changing) on ``[a/‖a‖; b/‖b‖]`` (``cluster_on="direction"``, as a public third-party
   implementation does) or on the raw ``[a; b]`` (``"raw"``). Units are sorted canonically first, so the
   result does not depend on the order of adapters or of ranks.
3. **Centroids.** The mean of each cluster's raw ``[a; b]`` is one unit of the merged LoRA.
4. **Dual reweighting.** *Parameter level* (``param_reweight``): a mean of vectors is shorter than its
   members (norm decay); ``"l2"`` rescales each centroid to the mean L2 norm of its members (``"linf"``: the
   ∞-norm, as the third-party implementation; ``"none"``). *Output level* (``output_reweight``): the merged
   update is scaled as a whole: ``"rank_ratio"`` multiplies it by ``√(r̄/k)`` (``r̄`` the mean input rank;
   one rank-one term per cluster replaces ``r̄`` per adapter), ``"match_sum"`` rescales it to the Frobenius
   norm of the sum of the inputs' updates (the output variance of concatenation, for unit-variance inputs),
   ``"match_mean"`` to the mean Frobenius norm of the inputs' updates, ``"none"`` leaves it.

**Caveat.** The paper's method section was not available to us: steps 1-3 follow its abstract and the MSU
definition; the reweighting formulas come from its reviews and a third-party implementation and could not be
checked against the paper. They are options, and the defaults (``param_reweight="l2"``,
``output_reweight="rank_ratio"``) are our choice. With ``k`` equal to the total number of units every
cluster is one unit, parameter reweighting does nothing, and with ``output_reweight="none"`` or
``"match_sum"`` the merge is exactly the concatenation (the sum of the inputs' updates).

The output is an ordinary peft LoRA folder (``adapter_config.json`` with ``r = lora_alpha = k``,
``adapter_model.safetensors``, plus ``merge.json`` describing the merge) that ``PeftModel.from_pretrained``
loads with stock peft, written atomically. :func:`merge_adapters` also runs peft's own
``add_weighted_adapter`` combinations (``svd``, ``cat``, ``ties``, ``dare_ties``, ``linear``, ...), so the
same command compares them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .targets import register_target_modules

register_target_modules()

ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS = "adapter_model.safetensors"
BIN = "adapter_model.bin"
# peft's LoraModel.add_weighted_adapter combination types
PEFT_METHODS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
_NEEDS_DENSITY = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                  "magnitude_prune", "magnitude_prune_svd")
_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass(frozen=True)
class LegoOptions:
    """Choices of a LoRA-LEGO merge (see the module docstring for what each does)."""

    cluster_on: str = "direction"        # "direction" ([a/|a|; b/|b|]) or "raw" ([a; b])
    canonical: bool = True               # rescale units to |a| = |b| and fix their sign before clustering
    param_reweight: str = "l2"           # "l2", "linf" or "none"
    output_reweight: str = "rank_ratio"  # "rank_ratio", "match_sum", "match_mean" or "none"
    seed: int = 0
    max_iter: int = 100

    def __post_init__(self):
        for name, allowed in (("cluster_on", ("direction", "raw")), ("param_reweight", ("l2", "linf", "none")),
                              ("output_reweight", ("rank_ratio", "match_sum", "match_mean", "none"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class Adapter:
    """One LoRA adapter as plain tensors: ``modules[name] = (A [r, ...], B [out, r, ...], scaling)``."""

    path: str
    config: dict
    modules: dict


def _pattern_value(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(path) -> Adapter:
    """Read a peft LoRA adapter folder (config + weights) without building a model."""
    path = Path(path)
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise ValueError(f"{path} has no {ADAPTER_CONFIG}: not a peft adapter folder")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: only LoRA adapters can be merged (peft_type={config.get('peft_type')!r})")
    for key, bad in (("use_dora", True), ("lora_bias", True)):
        if config.get(key) == bad:
            raise ValueError(f"{path}: adapters with {key}={bad} cannot be merged rank by rank")
    if (path / SAFETENSORS).is_file():
        from safetensors.torch import load_file

        state = load_file(path / SAFETENSORS)
    elif (path / BIN).is_file():
        state = torch.load(path / BIN, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path} has no {SAFETENSORS} or {BIN}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _SUFFIX.match(key)
        if m is None:
            raise ValueError(f"{path}: weight {key!r} is not a LoRA A/B matrix (embedding LoRAs, DoRA magnitudes "
                             "and modules_to_save cannot be merged rank by rank)")
        parts.setdefault(m["module"], {})[m["part"]] = tensor
    modules = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: module {module} has lora_{'A' if 'A' not in ab else 'B'} missing")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise ValueError(f"{path}: {module} has lora_A rank {r} but lora_B rank {b.shape[1]}")
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        modules[module] = (a, b, float(scaling))
    if not modules:
        raise ValueError(f"{path}: the adapter has no LoRA weights")
    return Adapter(str(path), config, modules)


def check_compatible(adapters: list[Adapter]) -> None:
    """Raise ``ValueError`` unless all adapters sit on the same base model and target the same modules."""
    if len(adapters) < 2:
        raise ValueError(f"merging needs at least two adapters, got {len(adapters)}")
    first = adapters[0]
    bases = {a.path: a.config.get("base_model_name_or_path") for a in adapters}
    known = {b for b in bases.values() if b}
    if len(known) > 1:
        listing = "; ".join(f"{p}: {b}" for p, b in bases.items())
        raise ValueError(f"the adapters were trained on different base models ({listing})")
    for key in ("fan_in_fan_out",):
        if len({bool(a.config.get(key)) for a in adapters}) > 1:
            raise ValueError(f"the adapters disagree on {key}")
    for other in adapters[1:]:
        if set(other.modules) != set(first.modules):
            only_first = sorted(set(first.modules) - set(other.modules))
            only_other = sorted(set(other.modules) - set(first.modules))
            what = (f"only in {first.path}: {', '.join(only_first[:3])}" if only_first else
                    f"only in {other.path}: {', '.join(only_other[:3])}")
            raise ValueError(f"the adapters target different modules ({what})")
        for module, (a, b, _) in first.modules.items():
            oa, ob, _ = other.modules[module]
            if oa.shape[1:] != a.shape[1:] or ob.shape[0] != b.shape[0] or ob.shape[2:] != b.shape[2:]:
                raise ValueError(f"module {module} has different shapes in {first.path} "
                                 f"(A {tuple(a.shape)}, B {tuple(b.shape)}) and {other.path} (A {tuple(oa.shape)}, "
                                 f"B {tuple(ob.shape)}): different base models")


# --------------------------------------------------------------------------------------------- the merge


def units(a: torch.Tensor, b: torch.Tensor, scaling: float, canonical: bool = True):
    """The MSUs of one LoRA module: ``(U_a [r, in], U_b [r, out])`` with ``Σ_i U_b[i] ⊗ U_a[i] = s·B A``."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], b.shape[1], -1).movedim(1, 0).reshape(b.shape[1], -1).double()  # [r, out*...]
    root = math.sqrt(abs(scaling))
    ua, ub = a * root, b * (root if scaling >= 0 else -root)
    if canonical:
        na, nb = ua.norm(dim=1, keepdim=True), ub.norm(dim=1, keepdim=True)
        ok = (na > 0) & (nb > 0)
        ratio = torch.where(ok, (nb / na.clamp_min(1e-300)).sqrt(), torch.ones_like(na))
        ua, ub = ua * ratio, ub / ratio
        lead = ua.gather(1, ua.abs().argmax(dim=1, keepdim=True)).sign()
        lead[lead == 0] = 1
        ua, ub = ua * lead, ub * lead
    return ua, ub


def _kmeans(x: torch.Tensor, k: int, seed: int, max_iter: int) -> torch.Tensor:
    """Labels of k-means (squared Euclidean) on rows of ``x``: k-means++ seeding, Lloyd until stable."""
    n = x.shape[0]
    if k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    centers = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((x - x[centers[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: take any unused point
            unused = [i for i in range(n) if i not in centers]
            nxt = unused[0]
        else:
            nxt = int(torch.multinomial((d2 / total).cpu(), 1, generator=gen))
        centers.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = x[centers].clone()
    x_sq = (x * x).sum(1, keepdim=True)
    labels = None
    for _ in range(max_iter):
        new = (x_sq - 2 * x @ c.T + (c * c).sum(1)).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        for j in (counts == 0).nonzero().flatten().tolist():  # an empty cluster takes the farthest point
            far = int(((x - c[labels]) ** 2).sum(1).argmax())
            c[j] = x[far]
            labels[far] = j
    return labels


def _canonical_order(feats: torch.Tensor) -> torch.Tensor:
    """A permutation of the rows of ``feats`` that does not depend on their order: sorted by projections on
    fixed pseudo-random directions (rows that tie on all of them are equal in practice, so their order is moot)."""
    g = torch.Generator().manual_seed(1234)
    keys = feats.cpu() @ torch.randn(feats.shape[1], 3, generator=g, dtype=feats.dtype)
    order = torch.arange(len(keys))
    for col in reversed(range(keys.shape[1])):  # lexicographic: stable sorts from the last key to the first
        order = order[torch.sort(keys[order, col], stable=True).indices]
    return order.to(feats.device)


def lego_merge_module(pieces, k: int, options: LegoOptions = LegoOptions()):
    """Merge one module's LoRAs. ``pieces``: ``[(A, B, scaling), ...]``. Returns ``(A [k, in...], B [out, k...])``
    in float64 with the scaling (1) folded in, so ``B A`` (flattened) is the merged update."""
    a_shape, b_shape = pieces[0][0].shape, pieces[0][1].shape
    uas, ubs = zip(*(units(a, b, s, options.canonical) for a, b, s in pieces))
    ua, ub = torch.cat(uas), torch.cat(ubs)
    n = ua.shape[0]
    if k > n:
        raise ValueError(f"rank {k} exceeds the {n} rank-one units the adapters have together")
    if options.cluster_on == "direction":
        feats = torch.cat([ua / ua.norm(dim=1, keepdim=True).clamp_min(1e-30),
                           ub / ub.norm(dim=1, keepdim=True).clamp_min(1e-30)], 1)
    else:
        feats = torch.cat([ua, ub], 1)
    order = _canonical_order(torch.cat([feats, ua, ub], 1))
    ua, ub, feats = ua[order], ub[order], feats[order]
    labels = _kmeans(feats.float(), k, options.seed, options.max_iter)
    joint = torch.cat([ua, ub], 1)
    cents = []
    for j in range(k):
        members = joint[labels == j]
        c = members.mean(0)
        if options.param_reweight != "none" and len(members) > 1:
            p = 2 if options.param_reweight == "l2" else float("inf")
            cn = torch.linalg.vector_norm(c, ord=p)
            if cn > 0:
                c = c * (torch.linalg.vector_norm(members, ord=p, dim=1).mean() / cn)
        cents.append(c)
    cents = torch.stack(cents)
    # clusters in a canonical order: by their first member in the sorted unit order
    first = torch.tensor([int((labels == j).nonzero()[0]) for j in range(k)])
    cents = cents[first.argsort()]
    in_dim = ua.shape[1]
    ca, cb = cents[:, :in_dim], cents[:, in_dim:]
    factor = 1.0
    if options.output_reweight == "rank_ratio":
        mean_rank = sum(a.shape[0] for a, _, _ in pieces) / len(pieces)
        factor = math.sqrt(mean_rank / k)
    elif options.output_reweight in ("match_sum", "match_mean"):
        merged = torch.linalg.matrix_norm(cb.T @ ca)
        if options.output_reweight == "match_sum":
            target = torch.linalg.matrix_norm(sum(b_.T @ a_ for a_, b_ in zip(uas, ubs)))
        else:
            target = torch.stack([torch.linalg.matrix_norm(b_.T @ a_) for a_, b_ in zip(uas, ubs)]).mean()
        factor = float(target / merged) if merged > 0 else 1.0
    root = math.sqrt(factor)
    ca, cb = ca * root, cb * root
    new_a = ca.reshape((k,) + tuple(a_shape[1:]))
    new_b = cb.reshape((k, b_shape[0]) + tuple(b_shape[2:])).movedim(0, 1).contiguous()
    return new_a, new_b


def lego_merge_weights(adapters: list[Adapter], rank: int, options: LegoOptions = LegoOptions()) -> dict:
    """``{module: (A, B)}`` of the merged rank-``rank`` LoRA (scaling 1), in the first adapter's dtype."""
    check_compatible(adapters)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    dtype = next(iter(adapters[0].modules.values()))[0].dtype
    out = {}
    for module in adapters[0].modules:
        a, b = lego_merge_module([ad.modules[module] for ad in adapters], rank, options)
        out[module] = (a.to(dtype), b.to(dtype))
    return out


def _merged_config(first: Adapter, rank: int) -> dict:
    cfg = dict(first.config)
    cfg.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
               init_lora_weights=True, use_dora=False, inference_mode=True)
    return cfg


def lego_merge(adapters, out, *, rank: int | None = None, options: LegoOptions | None = None,
               overwrite: bool = False) -> Path:
    """Merge adapter folders with LoRA-LEGO into the peft adapter folder ``out``.

    ``rank`` (the number of clusters, k) defaults to the largest input rank. Returns ``out``.
    """
    from safetensors.torch import save_file

    from ..hub.atomic import atomic_directory

    options = options or LegoOptions()
    loaded = [a if isinstance(a, Adapter) else load_adapter(a) for a in adapters]
    if rank is None:
        rank = max(a.shape[0] for ad in loaded for a, _, _ in ad.modules.values())
    merged = lego_merge_weights(loaded, rank, options)
    state = {}
    for module, (a, b) in merged.items():
        state[f"{module}.lora_A.weight"] = a.contiguous()
        state[f"{module}.lora_B.weight"] = b.contiguous()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(_merged_config(loaded[0], rank), indent=2, sort_keys=True) + "\n")
        (tmp / "merge.json").write_text(json.dumps({"method": "lego", "rank": rank, "options": asdict(options),
                                                    "adapters": [a.path for a in loaded]}, indent=1) + "\n")
    return Path(out)


# ------------------------------------------------------------------------------------------ peft's merges


def peft_merge(adapters, out, *, method: str, base=None, weights=None, rank: int | None = None,
               density: float | None = None, overwrite: bool = False) -> Path:
    """Merge adapter folders with peft's ``add_weighted_adapter(combination_type=method)`` into ``out``.

    ``base``: the base model (module, folder, shipped checkpoint name or repo id); default: the adapters'
    ``base_model_name_or_path``. ``weights`` default to 1 for every adapter; ``rank`` is ``svd_rank`` for the
    ``*svd`` methods; ``density`` (default 0.5) is used by ties / dare / magnitude_prune.
    """
    from peft import PeftModel

    from ..hub.atomic import atomic_directory
    from ..hub.export import load_model

    if method not in PEFT_METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose lego or one of peft's: {', '.join(PEFT_METHODS)}")
    loaded = [load_adapter(a) for a in adapters]
    check_compatible(loaded)
    if weights is None:
        weights = [1.0] * len(loaded)
    if len(weights) != len(loaded):
        raise ValueError(f"got {len(weights)} weights for {len(loaded)} adapters")
    if base is None:
        base = loaded[0].config.get("base_model_name_or_path")
        if not base:
            raise ValueError("the adapters do not record their base model; pass it (--base)")
    if method in _NEEDS_DENSITY and density is None:
        density = 0.5
    model, _ = load_model(base)
    names = [f"adapter_{i}" for i in range(len(loaded))]
    peft_model = PeftModel.from_pretrained(model, loaded[0].path, adapter_name=names[0])
    for name, ad in zip(names[1:], loaded[1:]):
        peft_model.load_adapter(ad.path, adapter_name=name)
    kwargs = {"svd_rank": rank} if method.endswith("svd") and rank is not None else {}
    if density is not None:
        kwargs["density"] = density
    peft_model.add_weighted_adapter(names, list(weights), "merged", combination_type=method, **kwargs)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        peft_model.save_pretrained(str(tmp), selected_adapters=["merged"])
        sub = tmp / "merged"
        for f in sub.iterdir():
            f.rename(tmp / f.name)
        sub.rmdir()
        (tmp / "merge.json").write_text(json.dumps({"method": method, "weights": list(weights), "rank": rank,
                                                    "density": density, "adapters": [a.path for a in loaded]},
                                                   indent=1) + "\n")
    return Path(out)


def merge_adapters(adapters, out, *, method: str = "lego", rank: int | None = None, base=None, weights=None,
                   density: float | None = None, options: LegoOptions | None = None,
                   overwrite: bool = False) -> Path:
    """Merge peft LoRA adapter folders into one: ``method="lego"`` (LoRA-LEGO, needs no base model) or any of
    peft's combination types (:data:`PEFT_METHODS`, needs the base model)."""
    if method == "lego":
        if weights is not None or density is not None:
            raise ValueError("weights and density apply to peft's methods, not to lego")
        return lego_merge(adapters, out, rank=rank, options=options, overwrite=overwrite)
    if options is not None:
        raise ValueError("LegoOptions apply to method='lego' only")
    return peft_merge(adapters, out, method=method, base=base, weights=weights, rank=rank, density=density,
                      overwrite=overwrite)
