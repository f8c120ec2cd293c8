"""PiSSA for hfzoo models, through peft's own implementation.

PiSSA (Meng et al., arXiv 2404.02948) starts a LoRA from the principal singular vectors of each target
weight, ``W = U S Vᵀ``: ``B = U_r √S_r``, ``A = √S_r V_rᵀ`` (divided by the LoRA scaling), and freezes the
*residual* ``W_res = W - scaling·B A``. Before training, ``W_res x + scaling·B A x`` is ``W x`` up to rounding.
peft implements this (``LoraConfig(init_lora_weights="pissa")`` with a full SVD, ``"pissa_niter_N"`` with
``torch.svd_lowrank`` and N subspace iterations); hfzoo uses it as is and adds:

- default target modules for every hfzoo architecture (:mod:`hfzoo.peft.targets`);
- :func:`pissa_init` / :func:`save_pissa`: one folder holding the residual model (exported with
  :func:`hfzoo.hub.export.export`, so it loads without hfzoo) and the initial adapter;
- :func:`pissa_to_lora`: a trained PiSSA adapter as a plain LoRA on the *original* model (peft's
  ``path_initial_model_for_weight_conversion``: rank doubles, ``A' = [A; A₀]``, ``B' = [B, -B₀]``).

Folder written by ``hfzoo pissa init`` / :func:`save_pissa`::

    out/residual/      the model with W_res in place of W (config, weights, remote code, tokenizer/processor)
    out/adapter/       the initial PiSSA adapter (adapter_config.json, adapter_model.safetensors)
    out/pissa.json     how it was made: original model, rank, alpha, init, target modules

Fine-tune with ``PeftModel.from_pretrained(AutoModel...(out/residual), out/adapter, is_trainable=True)``.
The saved adapter config says ``init_lora_weights: true``, so loading it does not decompose the residual again.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .targets import register_target_modules

register_target_modules()

PISSA_FILE = "pissa.json"


def _init_name(niter: int | None) -> str | bool:
    if niter is None:
        return "pissa"
    if not isinstance(niter, int) or isinstance(niter, bool) or niter < 0:
        raise ValueError(f"niter must be a non-negative integer or None (full SVD), got {niter!r}")
    return f"pissa_niter_{niter}"


def pissa_config(rank: int = 16, *, alpha: float | None = None, niter: int | None = None,
                 target_modules=None, **lora_kwargs):
    """A ``peft.LoraConfig`` with PiSSA initialization; ``alpha`` defaults to ``rank`` (scaling 1), as in the
    PiSSA paper. ``target_modules=None`` lets peft use the architecture's default targets."""
    from peft import LoraConfig

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights=_init_name(niter),
                      target_modules=list(target_modules) if target_modules else None, **lora_kwargs)


def pissa_init(model, rank: int = 16, *, alpha: float | None = None, niter: int | None = None,
               target_modules=None, **lora_kwargs):
    """Wrap ``model`` (a model, folder, shipped checkpoint name or Hub repo id) in a PiSSA ``PeftModel``.

    The returned model's base weights are the residuals (modified in place when ``model`` is a module).
    Raises ``ValueError`` when ``rank`` exceeds a target layer's smaller dimension.
    """
    from peft import get_peft_model

    from ..hub.export import load_model

    model, _ = load_model(model)
    config = pissa_config(rank, alpha=alpha, niter=niter, target_modules=target_modules, **lora_kwargs)
    _check_rank(model, config)
    return get_peft_model(model, config)


def _check_rank(model, config) -> None:
    from .targets import default_target_modules

    targets = config.target_modules
    if targets is None:
        targets = default_target_modules().get(getattr(getattr(model, "config", None), "model_type", None))
        if targets is None:
            return  # peft raises its own "Please specify `target_modules`" error

    def targeted(name):
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in targets)

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and targeted(name):
            if config.r > min(module.in_features, module.out_features):
                raise ValueError(f"rank {config.r} exceeds the size of {name} ({module.out_features}x"
                                 f"{module.in_features}); PiSSA needs rank <= min(in, out)")


def save_pissa(peft_model, out, *, original: str | None = None, source_folder=None, overwrite: bool = False,
               card: bool = True) -> Path:
    """Write ``out/residual`` (exported), ``out/adapter`` and ``out/pissa.json`` in one atomic step.

    ``original`` names the model PiSSA started from (recorded for :func:`pissa_to_lora`); the tokenizer /
    processor files come from ``source_folder`` (default: the folder the model was loaded from, which the
    exporter finds through ``name_or_path``). ``peft_model`` is left unchanged.
    """
    import copy

    from ..hub.atomic import atomic_directory
    from ..hub.export import export

    name = peft_model.active_adapter
    cfg = peft_model.peft_config[name]
    if not str(cfg.init_lora_weights).startswith("pissa"):
        raise ValueError(f"adapter {name!r} was not initialized with PiSSA (init_lora_weights="
                         f"{cfg.init_lora_weights!r})")
    out = Path(out)
    tokenizer = processor = None
    if source_folder is not None and isinstance(source_folder, (str, Path)) and Path(source_folder).is_dir():
        src = Path(source_folder)
        if (src / "tokenizer.json").is_file() or (src / "tokenizer_config.json").is_file():
            tokenizer = src
        if (src / "preprocessor_config.json").is_file():
            processor = src
    final_residual = str(out.resolve() / "residual")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        # the initial adapter, its config saying "do not decompose again when loading"
        saved_cfg = copy.deepcopy(cfg)
        peft_model.peft_config[name] = copy.deepcopy(cfg)
        peft_model.peft_config[name].init_lora_weights = True
        peft_model.peft_config[name].base_model_name_or_path = final_residual
        try:
            peft_model.save_pretrained(tmp / "adapter", selected_adapters=[name])
            if name != "default":  # peft saves a non-default adapter in a subfolder named after it
                shutil.move(str(tmp / "adapter" / name), str(tmp / "adapter_tmp"))
                shutil.rmtree(tmp / "adapter")
                (tmp / "adapter_tmp").rename(tmp / "adapter")
        finally:
            peft_model.peft_config[name] = saved_cfg
        residual = _residual_copy(peft_model)
        extra = ("This is the **PiSSA residual** of a model: the principal components of its target layers "
                 "were moved into a LoRA adapter (saved beside this folder). Load the adapter with peft on top "
                 "of this model to get the original outputs back.")
        export(residual, tmp / "residual", card=card, tokenizer=tokenizer, processor=processor, card_extra=extra)
        meta = {"original": original, "rank": cfg.r, "alpha": cfg.lora_alpha, "init": cfg.init_lora_weights,
                "target_modules": sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str)
                else cfg.target_modules}
        (tmp / PISSA_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def _residual_copy(peft_model):
    """The base model with residual weights, as a plain transformers model (the PeftModel is untouched)."""
    import copy

    base = copy.deepcopy(peft_model.get_base_model())
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(base.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, module.get_base_layer())
    return base


def pissa_init_folder(source, out, rank: int = 16, *, alpha: float | None = None, niter: int | None = None,
                      target_modules=None, overwrite: bool = False) -> Path:
    """``hfzoo pissa init``: decompose ``source`` (folder, shipped checkpoint name or repo id) and write
    ``out`` (see the module docstring)."""
    from ..hub.export import load_model

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    model, folder = load_model(source)
    peft_model = pissa_init(model, rank, alpha=alpha, niter=niter, target_modules=target_modules)
    return save_pissa(peft_model, out, original=str(folder), source_folder=folder, overwrite=overwrite)


def pissa_to_lora(trained_adapter, pissa_dir, out, *, original: str | None = None, overwrite: bool = False) -> Path:
    """Convert a trained PiSSA adapter into a plain LoRA adapter for the original model.

    ``trained_adapter``: adapter folder saved after fine-tuning on ``pissa_dir/residual``; ``pissa_dir``: the
    folder written by :func:`pissa_init_folder`. The result (rank 2r, same scaling) applied to the original
    model gives the fine-tuned outputs; its ``base_model_name_or_path`` is the original model (``original``
    overrides what ``pissa.json`` records).
    """
    from peft import PeftModel

    from ..hub.atomic import atomic_directory
    from ..hub.export import load_model

    pissa_dir, trained_adapter = Path(pissa_dir), Path(trained_adapter)
    for need in (pissa_dir / "residual" / "config.json", pissa_dir / "adapter" / "adapter_config.json"):
        if not need.is_file():
            raise ValueError(f"{pissa_dir} is not a folder written by `hfzoo pissa init` (missing {need.name} in "
                             f"{need.parent.name}/)")
    if not (trained_adapter / "adapter_config.json").is_file():
        raise ValueError(f"{trained_adapter} has no adapter_config.json: not a peft adapter folder")
    meta_path = pissa_dir / PISSA_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    original = original or meta.get("original")
    residual, _ = load_model(pissa_dir / "residual")
    model = PeftModel.from_pretrained(residual, str(trained_adapter))
    cfg = model.peft_config[model.active_adapter]
    if str(cfg.init_lora_weights).startswith("pissa"):
        raise ValueError(f"{trained_adapter}/adapter_config.json says init_lora_weights={cfg.init_lora_weights!r}: "
                         "loading it decomposed the residual again; save adapters with init_lora_weights=True")
    init_cfg = json.loads((pissa_dir / "adapter" / "adapter_config.json").read_text())
    if sorted(init_cfg.get("target_modules") or []) != sorted(cfg.target_modules or []) or init_cfg.get("r") != cfg.r:
        raise ValueError(f"{trained_adapter} does not match the initial adapter in {pissa_dir}/adapter "
                         "(different rank or target modules)")
    if original is not None:
        cfg.base_model_name_or_path = original
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch, atomic_directory(out, overwrite=overwrite) as tmp:
        # peft rewrites the initial adapter's config while converting: hand it a copy
        initial = Path(scratch) / "pissa_initial"
        shutil.copytree(pissa_dir / "adapter", initial)
        model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(initial))
    return out
