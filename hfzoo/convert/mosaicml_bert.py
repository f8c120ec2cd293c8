"""MosaicML MosaicBERT checkpoints (``examples/benchmarks/bert/src/bert_layers.py``) -> hfzoo MosaicBERT.

Two source formats:

* a Hub-style folder (e.g. ``mosaicml/mosaic-bert-base``): ``config.json`` (a ``BertConfig`` with
  ``alibi_starting_size`` and an ``auto_map`` to ``bert_layers``) and ``model.safetensors`` or
  ``pytorch_model.bin`` (single file, or sharded with its ``*.index.json``);
* a Composer training checkpoint ``*.pt``: ``torch.load(weights_only=True)`` gives
  ``{"state": {"model": {"model.bert....": tensor}}, ...}`` (the ``model.`` prefix comes from Composer's
  ``HuggingFaceModel`` wrapper). Its config is read from the checkpoint's Hugging Face integration entry
  when present, otherwise pass ``config=`` (a ``config.json``).

Parameter names are MosaicML's and are kept as they are (``bert.encoder.layer.N.attention.self.Wqkv``,
``...mlp.gated_layers``, ``...mlp.wo``, ``...mlp.layernorm``, ``cls.predictions.*``); the decoder weight is
tied to the word embeddings. The task is read from the keys: ``cls.predictions.*`` -> masked LM,
``classifier.*`` -> sequence classification. MosaicML's MLM head scored positions with ``labels > 0``;
ours scores ``labels != -100`` (the same positions for data from the usual collator, see
``MosaicBertForMaskedLM``). MosaicML's tokenizer is BERT's (``bert-base-uncased``), which the Hub repo does
not ship: pass ``tokenizer=`` (a folder with tokenizer files) to put one beside the weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..models.mosaicbert.configuration_mosaicbert import MosaicBertConfig


from ..hub.atomic import atomic_directory
from ..hub.progress import say
from .checkpoint_io import load_files, load_torch, read_json

SOURCE = "mosaicml-bert"
DESCRIPTION = "MosaicML MosaicBERT (Hub folder with bert_layers.py weights, or a Composer .pt) -> hfzoo MosaicBERT"

# Buffers some checkpoints carry that hold no learned values (token-type/position id ranges).
_IGNORED_BUFFERS = ("bert.embeddings.token_type_ids", "bert.embeddings.position_ids")
# Config keys that describe the original code, not the model.
_DROPPED_CONFIG_KEYS = ("auto_map", "architectures", "model_type", "_name_or_path", "transformers_version",
                        "torch_dtype", "dtype")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="config.json for a Composer .pt that carries none")
    parser.add_argument("--tokenizer", default=None, help="folder with tokenizer files to copy beside the weights")


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            return load_files([folder / s for s in sorted(set(weight_map.values()))], f"{SOURCE}: reading shards")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return load_files([folder / name], f"{SOURCE}: reading weights")
    raise ValueError(f"{folder}: no model.safetensors, pytorch_model.bin or sharded index found")


def _composer_state(obj, path: Path) -> tuple[dict, dict | None]:
    """Model tensors (``model.`` prefix removed) and, if stored, the Hugging Face config of a Composer file."""
    import torch

    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors or a Composer checkpoint, got {type(obj).__name__}")
    config = None
    if "state" in obj:
        state = obj["state"]
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError(f"{path}: Composer checkpoint without state['model']; top-level state keys: "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        try:
            config = state["integrations"]["huggingface"]["model"]["config"]["content"]
        except (KeyError, TypeError):
            config = None
        obj = state["model"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        others = sorted(k for k in obj if k not in tensors)
        raise ValueError(f"{path}: non-tensor entries in the model state: {others[:10]}")
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k[len("model."):]: v for k, v in tensors.items()}
    return tensors, config


def read_source(source, config=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, config_dict)`` of a MosaicML checkpoint folder or Composer ``.pt`` file."""
    source = Path(source)
    cfg_dict = None
    if config is not None:
        cfg_dict = read_json(config)
    if source.is_dir():
        state = _load_weights(source)
        if cfg_dict is None:
            if not (source / "config.json").is_file():
                raise ValueError(f"{source}: no config.json (pass config=...)")
            cfg_dict = read_json(source / "config.json")
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
    elif source.is_file():
        say(f"{SOURCE}: reading the Composer checkpoint {source}")
        state, stored = _composer_state(load_torch(source), source)
        cfg_dict = cfg_dict or stored
        if cfg_dict is None:
            raise ValueError(f"{source}: the checkpoint carries no config; pass config=path/to/config.json")
    else:
        raise ValueError(f"{source}: no such file or folder")
    return state, cfg_dict


def to_config(cfg_dict: dict, num_labels: int | None = None) -> MosaicBertConfig:
    from ..models.mosaicbert.configuration_mosaicbert import MosaicBertConfig

    fields = {k: v for k, v in cfg_dict.items() if k not in _DROPPED_CONFIG_KEYS}
    if num_labels is not None:
        fields["num_labels"] = num_labels
    try:
        return MosaicBertConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the checkpoint's config does not make a MosaicBERT config: {e}") from e


def convert_state_dict(state: dict[str, torch.Tensor], config: MosaicBertConfig):
    """Build the hfzoo model holding ``state``; ``ValueError`` lists unknown/missing keys or bad shapes."""
    import torch

    from ..models.mosaicbert.modeling_mosaicbert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification

    state = {k: v for k, v in state.items() if k not in _IGNORED_BUFFERS}
    if "cls.predictions.bias" in state and "cls.predictions.decoder.bias" not in state:  # HF-BERT-style head
        state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")
    if any(k.startswith("cls.predictions.") for k in state):
        model = MosaicBertForMaskedLM(config)
        emb = state.get("bert.embeddings.word_embeddings.weight")
        dec = state.pop("cls.predictions.decoder.weight", None)
        if dec is not None and emb is not None and (dec.shape != emb.shape or not torch.equal(dec, emb)):
            raise ValueError("cls.predictions.decoder.weight differs from bert.embeddings.word_embeddings.weight; "
                             "MosaicBERT ties them")
    elif "classifier.weight" in state:
        model = MosaicBertForSequenceClassification(config)
    else:
        raise ValueError("checkpoint has neither an MLM head (cls.predictions.*) nor a classifier (classifier.*); "
                         f"first keys: {sorted(state)[:8]}")
    expected = {k: v for k, v in model.state_dict().items()}
    expected.pop("cls.predictions.decoder.weight", None)  # tied
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise ValueError(f"checkpoint keys do not match MosaicBERT ({type(model).__name__}): "
                         f"unexpected {unknown[:20]}{' ...' if len(unknown) > 20 else ''}; "
                         f"missing {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
           if v.shape != expected[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes do not match the config: {bad[:10]}")
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if k != "cls.predictions.decoder.weight"]
    if leftover or result.unexpected_keys:
        raise ValueError(f"loading left missing {leftover} / unexpected {result.unexpected_keys}")
    if isinstance(model, MosaicBertForMaskedLM):
        model.tie_weights()
    return model.eval()


def convert(source, output, *, overwrite: bool = False, config=None, tokenizer=None) -> Path:
    """Convert a MosaicML MosaicBERT checkpoint (folder or Composer ``.pt``) into an hfzoo folder."""
    state, cfg_dict = read_source(source, config)
    num_labels = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    say(f"{SOURCE}: checking {len(state)} tensors against a MosaicBERT of the checkpoint's config")
    model = convert_state_dict(state, to_config(cfg_dict, num_labels))
    say(f"{SOURCE}: writing {output} ({type(model).__name__})")
    tok_dir = Path(tokenizer) if tokenizer is not None else (Path(source) if Path(source).is_dir() else None)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tok_dir is not None:
            found = [name for name in TOKENIZER_FILES if (tok_dir / name).is_file()]
            if tokenizer is not None and not found:
                raise ValueError(f"{tok_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
            for name in found:
                shutil.copy2(tok_dir / name, Path(tmp) / name)
    return Path(output)
