"""PEFT tools for hfzoo models, built on peft: PiSSA initialization and conversion, LoRA-LEGO merges.

- :mod:`hfzoo.peft.targets`: every hfzoo architecture's default LoRA targets, declared to peft, so
  ``get_peft_model(model, LoraConfig(init_lora_weights="pissa"))`` works without naming modules;
- :mod:`hfzoo.peft.pissa`: ``pissa_init`` (residual model + adapter, exported), ``pissa_to_lora``;
- :mod:`hfzoo.peft.lego`: ``lego_merge`` (rank-wise clustering of LoRA units), ``merge_adapters`` (LEGO or
  any of peft's ``add_weighted_adapter`` combinations), both writing ordinary peft adapter folders.

Importing this package is cheap (it does not import peft); the names below load their module on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "register_target_modules": "targets", "default_target_modules": "targets",
    "pissa_init": "pissa", "pissa_init_folder": "pissa", "save_pissa": "pissa", "pissa_to_lora": "pissa",
    "pissa_config": "pissa", "load_adapter": "lego", "peft_merge": "lego",
    "lego_merge": "lego", "lego_merge_weights": "lego", "merge_adapters": "lego", "LegoOptions": "lego",
    "PEFT_METHODS": "lego",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
