"""The ``hfzoo pissa`` and ``hfzoo merge`` commands (added to the CLI by :func:`add_peft_commands`).

    hfzoo pissa init tiny-gla --rank 8 --out gla-pissa
    hfzoo pissa to-lora trained-adapter --pissa gla-pissa --out gla-lora
    hfzoo merge lego adapter-a adapter-b adapter-c --rank 16 --out merged
    hfzoo merge ties adapter-a adapter-b --base tiny-gla --out merged-ties

Building the parser imports neither peft nor torch; each command imports what it needs when it runs.
"""

from __future__ import annotations

LEGO_CHOICES = {"cluster_on": ("direction", "raw"), "param_reweight": ("l2", "linf", "none"),
                "output_reweight": ("rank_ratio", "match_sum", "match_mean", "none")}
# kept in step with hfzoo.peft.lego.PEFT_METHODS (a test checks), so that building the parser stays cheap
PEFT_METHODS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
METHODS = ("lego",) + PEFT_METHODS


def _cmd_pissa_init(args) -> int:
    from .pissa import pissa_init_folder

    out = pissa_init_folder(args.model, args.out, args.rank, alpha=args.alpha, niter=args.niter,
                            target_modules=args.target_modules, overwrite=args.overwrite)
    print(f"PiSSA rank {args.rank}: residual model -> {out / 'residual'}, adapter -> {out / 'adapter'}")
    return 0


def _cmd_pissa_to_lora(args) -> int:
    from .pissa import pissa_to_lora

    out = pissa_to_lora(args.adapter, args.pissa, args.out, original=args.original, overwrite=args.overwrite)
    print(f"LoRA for the original model -> {out}")
    return 0


def _cmd_merge(args) -> int:
    from .lego import LegoOptions, merge_adapters

    items = list(args.items)
    method = args.method
    if items and items[0] in METHODS:
        if method is not None and method != items[0]:
            raise ValueError(f"two methods given: {items[0]!r} and --method {method!r}")
        method = items.pop(0)
    method = method or "lego"
    if len(items) < 2:
        raise ValueError(f"merging needs at least two adapter folders, got {len(items)}")
    lego_flags = {k: getattr(args, k) for k in ("cluster_on", "param_reweight", "output_reweight", "seed")
                  if getattr(args, k) is not None}
    options = None
    if method == "lego":
        options = LegoOptions(**lego_flags)
    elif lego_flags:
        raise ValueError(f"--{next(iter(lego_flags)).replace('_', '-')} applies to the lego method only")
    out = merge_adapters(items, args.out, method=method, rank=args.rank, base=args.base, weights=args.weights,
                         density=args.density, options=options, overwrite=args.overwrite)
    print(f"merged {len(items)} adapters ({method}) -> {out}")
    return 0


def add_peft_commands(sub) -> None:
    """Add ``pissa`` (``init``, ``to-lora``) and ``merge`` to the ``hfzoo`` sub-command parsers ``sub``."""
    p = sub.add_parser("pissa", help="PiSSA: principal-component LoRA initialization and conversion to LoRA")
    ps = p.add_subparsers(dest="pissa_command", metavar="ACTION")
    ps.required = True

    c = ps.add_parser("init", help="split a model into a residual model and a PiSSA adapter")
    c.add_argument("model", help="model folder, shipped checkpoint name (e.g. tiny-gla) or Hub repo id")
    c.add_argument("--rank", "-r", type=int, required=True, help="LoRA rank")
    c.add_argument("--out", "-o", required=True, help="folder to create (residual/, adapter/, pissa.json)")
    c.add_argument("--alpha", type=float, help="lora_alpha (default: the rank, i.e. scaling 1)")
    c.add_argument("--niter", type=int, help="fast randomized SVD with this many subspace iterations "
                   "(peft's pissa_niter_N); default: full SVD")
    c.add_argument("--target-modules", nargs="+", help="module names to adapt (default: the architecture's)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=_cmd_pissa_init)

    c = ps.add_parser("to-lora", help="convert a trained PiSSA adapter into a LoRA for the original model")
    c.add_argument("adapter", help="the trained adapter folder (fine-tuned on <pissa>/residual)")
    c.add_argument("--pissa", required=True, help="the folder written by `hfzoo pissa init`")
    c.add_argument("--out", "-o", required=True, help="adapter folder to create")
    c.add_argument("--original", help="base_model_name_or_path to record (default: what pissa init recorded)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=_cmd_pissa_to_lora)

    p = sub.add_parser("merge", help="merge LoRA adapters: LoRA-LEGO (lego) or peft's combinations",
                       description="Merge peft LoRA adapter folders into one. METHOD is lego (rank-wise "
                       "clustering, no base model needed) or one of peft's add_weighted_adapter types: "
                       + ", ".join(PEFT_METHODS) + ".")
    p.add_argument("items", nargs="+", metavar="ADAPTER", help="adapter folders; the first argument may instead "
                   "name the method (hfzoo merge lego A B C)")
    p.add_argument("--method", choices=METHODS, metavar="METHOD", help="merge method, instead of naming it first "
                   "(default lego)")
    p.add_argument("--out", "-o", required=True, help="adapter folder to create")
    p.add_argument("--rank", "-r", type=int, help="merged rank: clusters for lego (default: the largest input "
                   "rank), svd_rank for peft's *svd methods")
    p.add_argument("--base", help="base model for peft's methods (default: the adapters' base_model_name_or_path)")
    p.add_argument("--weights", type=float, nargs="+", help="per-adapter weights for peft's methods (default 1)")
    p.add_argument("--density", type=float, help="density for ties/dare/magnitude_prune (default 0.5)")
    p.add_argument("--cluster-on", choices=LEGO_CHOICES["cluster_on"], help="lego: cluster unit directions "
                   "(default) or raw units")
    p.add_argument("--param-reweight", choices=LEGO_CHOICES["param_reweight"], help="lego: centroid norm "
                   "restoration (default l2)")
    p.add_argument("--output-reweight", choices=LEGO_CHOICES["output_reweight"], help="lego: scaling of the "
                   "merged update (default rank_ratio)")
    p.add_argument("--seed", type=int, help="lego: k-means seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_merge)


__all__ = ["add_peft_commands", "METHODS"]
