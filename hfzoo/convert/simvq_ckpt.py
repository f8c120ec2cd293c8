"""Released SimVQ image tokenizers (PyTorch Lightning ``.ckpt`` + LightningCLI ``config.yaml``) -> hfzoo SimVQ.

The release (Hub ``zyx123/SimVQ``, folders ``vq_log/simvq_{1k,8k,65k,262k}``) holds, per model, the
``config.yaml`` LightningCLI wrote and a Lightning checkpoint. What is read:

* ``config.yaml``: ``model.class_path`` must be ``taming.models.vq.VQModel`` (the image tokenizer; the audio one,
  ``taming.models.vq_audio``, has a different encoder and is not supported); ``model.init_args.ddconfig`` gives
  ``ch, ch_mult, num_res_blocks, z_channels, in_channels, out_ch, resolution``; ``quantconfig`` must target
  ``taming.modules.vqvae.quantize.SimVQ`` with ``params`` ``n_e, e_dim (= z_channels), beta, legacy``.
* the checkpoint's ``state_dict``: ``encoder.*``, ``decoder.*`` and ``quantize.{embedding.weight,
  embedding_proj.weight, embedding_proj.bias}`` map one to one onto hfzoo's names (the model keeps the
  reference's module names). Deliberately ignored: ``loss.*`` (LPIPS network and discriminator, training
  only). ``model_ema.*`` holds the exponential moving average of the trainable weights, flattened to names
  without dots (``encoderconv_inweight``), plus ``decay``/``num_updates``; the reference's evaluation script
  evaluates with these EMA weights, so ``weights="ema"`` (the default when present) takes them -- the frozen
  codebook C is not averaged and comes from ``quantize.embedding.weight`` -- and ``weights="raw"`` takes the
  last optimizer step's weights and ignores ``model_ema.*``. Any other missing or unexpected key is an error.

Loading is ``torch.load(weights_only=True)``. A Lightning 2.2 checkpoint of this model (``epoch``,
``global_step``, ``pytorch-lightning_version``, ``state_dict``, ``loops``, ``callbacks``, ``optimizer_states``,
``lr_schedulers``, and with 16-bit mixed precision the grad scaler's numbers) contains only tensors and plain
containers and loads as is (checked with a real Lightning 2.2.5 trainer checkpoint). Checkpoints of modules that
call ``save_hyperparameters`` also pickle Lightning's ``AttributeDict`` (and with OmegaConf configs,
``omegaconf`` containers), which the weights-only unpickler refuses. For those, the pickle's globals are listed
*without running it* (``torch.serialization.get_unsafe_globals_in_checkpoint``); if every one is in
``_HARMLESS_GLOBALS`` -- plain data holders -- the file is loaded again with weights-only unpickling, with those
names mapped to inert stand-ins (a plain dict for ``AttributeDict``; for the others a dict subclass that only
stores what the pickle hands it); they never become the original classes and no code from the file runs. Any other global is refused with a ``ValueError`` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.simvq.configuration_simvq import SimVQConfig


from ..hub.atomic import save_pretrained_atomic
from ..hub.progress import human_bytes, say

SOURCE = "simvq"
DESCRIPTION = "SimVQ image tokenizer (Lightning .ckpt + config.yaml from youngsheen/SimVQ) -> hfzoo SimVQ"

IGNORED_PREFIXES = ("loss.",)
EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
_QUANTIZERS = ("taming.modules.vqvae.quantize.SimVQ",)
_MODEL_CLASS = "taming.models.vq.VQModel"


class _InertRecord(dict):
    """Stand-in for a pickled data holder: keeps items, attributes and constructor arguments, runs nothing."""

    def __new__(cls, *args, **kwargs):
        obj = dict.__new__(cls)
        obj._args = args
        return obj

    def __init__(self, *args, **kwargs):  # never called by the unpickler; constructing by hand stays harmless
        dict.__init__(self)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slots_state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


def _inert_callable(*args, **kwargs):
    return _InertRecord()


# Globals that Lightning checkpoints may pickle around hyperparameters and that hold plain data only.
# Lightning's AttributeDict is a dict subclass with no state of its own: it becomes a plain dict (the weights-only
# unpickler fills only exact dicts with items). The others keep their state in an _InertRecord.
_HARMLESS_GLOBALS = {
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "omegaconf.dictconfig.DictConfig": _InertRecord,
    "omegaconf.listconfig.ListConfig": _InertRecord,
    "omegaconf.base.ContainerMetadata": _InertRecord,
    "omegaconf.base.Metadata": _InertRecord,
    "omegaconf.nodes.AnyNode": _InertRecord,
    "omegaconf.nodes.StringNode": _InertRecord,
    "omegaconf.nodes.IntegerNode": _InertRecord,
    "omegaconf.nodes.FloatNode": _InertRecord,
    "omegaconf.nodes.BooleanNode": _InertRecord,
    "typing.Any": _InertRecord,
    "pathlib.PosixPath": _inert_callable,
    "pathlib.WindowsPath": _inert_callable,
    "argparse.Namespace": _InertRecord,
    "jsonargparse._namespace.Namespace": _InertRecord,
}


def load_lightning_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of a Lightning checkpoint, tolerating only ``_HARMLESS_GLOBALS``."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first_error:
        try:
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(first_error).__name__}: "
                             f"{_first_line(first_error)})") from e
        if not unsafe:
            raise ValueError(f"{path}: torch.load(weights_only=True) failed ({_first_line(first_error)})"
                             ) from first_error
        refused = sorted(g for g in unsafe if g not in _HARMLESS_GLOBALS)
        if refused:
            raise ValueError(f"{path}: the checkpoint pickles objects that weights-only loading refuses and that are "
                             f"not known plain-data holders: {refused}. Save its 'state_dict' alone with "
                             "torch.save, from an environment you trust, and convert that.") from first_error
        stand_ins = [(_HARMLESS_GLOBALS[g], g) for g in unsafe]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable YAML file ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a YAML mapping (LightningCLI config)")
    return doc


def config_from_yaml(doc: dict, where: str = "config.yaml") -> SimVQConfig:
    """``SimVQConfig`` from a LightningCLI config of the reference image tokenizer."""
    from ..models.simvq.configuration_simvq import SimVQConfig

    model = doc.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{where}: no 'model' section")
    cls = model.get("class_path")
    if cls != _MODEL_CLASS:
        raise ValueError(f"{where}: model.class_path is {cls!r}; only the image tokenizer {_MODEL_CLASS} is supported"
                         + (" (the audio tokenizer uses a different encoder/decoder)" if cls and "audio" in cls else ""))
    args = model.get("init_args") or {}
    dd, qc = args.get("ddconfig"), args.get("quantconfig")
    if not isinstance(dd, dict) or not isinstance(qc, dict):
        raise ValueError(f"{where}: model.init_args needs 'ddconfig' and 'quantconfig'")
    if qc.get("target") not in _QUANTIZERS:
        raise ValueError(f"{where}: quantconfig.target is {qc.get('target')!r}; expected one of {_QUANTIZERS}")
    qp = qc.get("params") or {}
    missing = [k for k in ("ch", "ch_mult", "num_res_blocks", "z_channels") if k not in dd] + \
              [f"quantconfig.params.{k}" for k in ("n_e", "e_dim") if k not in qp]
    if missing:
        raise ValueError(f"{where}: missing settings {missing}")
    if int(qp["e_dim"]) != int(dd["z_channels"]):
        raise ValueError(f"{where}: e_dim ({qp['e_dim']}) must equal z_channels ({dd['z_channels']}): the reference "
                         "image tokenizer has no quant convs")
    return SimVQConfig(
        spatial_dims=2, in_channels=int(dd.get("in_channels", 3)), out_channels=int(dd.get("out_ch", 3)),
        ch=int(dd["ch"]), ch_mult=[int(m) for m in dd["ch_mult"]], num_res_blocks=int(dd["num_res_blocks"]),
        z_channels=int(dd["z_channels"]), codebook_size=int(qp["n_e"]), beta=float(qp.get("beta", 0.25)),
        legacy_loss=bool(qp.get("legacy", True)),  # the reference class defaults to legacy=True
        resolution=int(dd.get("resolution", 128)), norm_num_groups=32)


def map_state_dict(state: dict, expected: list[str], weights: str = "auto") -> tuple[dict, str]:
    """Lightning ``state_dict`` -> hfzoo state dict. Returns ``(state, weights_used)``.

    ``weights``: ``"ema"`` (EMA of the trainable weights), ``"raw"``, or ``"auto"`` (EMA when present).
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    keys = [k for k in state if isinstance(k, str)]
    has_ema = any(k.startswith(EMA_PREFIX) for k in keys)
    if weights == "auto":
        weights = "ema" if has_ema else "raw"
    if weights == "ema" and not has_ema:
        raise ValueError("weights='ema' was asked for, but the checkpoint has no model_ema.* keys")
    model_keys = {k for k in keys if not k.startswith(IGNORED_PREFIXES) and not k.startswith(EMA_PREFIX)}
    missing = sorted(set(expected) - model_keys)
    unexpected = sorted(model_keys - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the SimVQ image tokenizer: missing keys {missing[:20]}"
                         f"{' ...' if len(missing) > 20 else ''}; unexpected keys {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''} (ignored on purpose: {IGNORED_PREFIXES} and "
                         f"{EMA_PREFIX}*)")
    out = {k: state[k] for k in expected}
    if weights == "ema":
        averaged = {k[len(EMA_PREFIX):]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
        frozen = {"quantize.embedding.weight"}  # C is frozen, so the EMA never tracked it
        lacking = []
        for k in expected:
            if k in frozen:
                continue
            flat = k.replace(".", "")
            if flat in averaged:
                out[k] = averaged[flat]
            else:
                lacking.append(f"{EMA_PREFIX}{flat}")
        if lacking:
            raise ValueError(f"EMA weights are incomplete: missing {lacking[:20]}; convert with weights='raw'")
    return out, weights


def _find_checkpoint(source: Path) -> Path:
    if source.is_file():
        return source
    if not source.is_dir():
        raise ValueError(f"{source}: no such checkpoint file or folder")
    found = sorted(source.rglob("*.ckpt"))
    if not found:
        raise ValueError(f"{source}: no *.ckpt file inside")
    if len(found) == 1:
        return found[0]

    def progress(p: Path):
        m = re.search(r"epoch=(\d+).*?step=(\d+)", p.name)
        return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)

    ranked = sorted(found, key=progress)
    if progress(ranked[-1]) == (-1, -1) or progress(ranked[-1]) == progress(ranked[-2]):
        raise ValueError(f"{source}: several checkpoints and no single latest one; pass the file: "
                         f"{[str(p) for p in found]}")
    return ranked[-1]


def _find_config(ckpt: Path, source: Path, config) -> Path:
    """``config`` if given, else the nearest ``config.yaml`` in the checkpoint's folder or up to two folders above
    (LightningCLI writes it beside the logs; checkpoints often sit in a ``checkpoints/`` subfolder)."""
    if config is not None:
        return Path(config)
    candidates = [ckpt.parent, *list(ckpt.parent.parents)[:2]]
    if source.is_dir() and source not in candidates:
        candidates.insert(0, source)
    for folder in candidates:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ValueError(f"no config.yaml found next to {ckpt} or in the two folders above it; pass config=")


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="LightningCLI config.yaml (default: found beside the .ckpt)")
    parser.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                        help="EMA weights (what the authors evaluated; default when present) or the raw weights")


def convert(source, output, *, overwrite: bool = False, config=None, weights: str = "auto") -> Path:
    """Convert a released SimVQ checkpoint (file, or a folder with one ``.ckpt`` and ``config.yaml``)."""
    import torch

    from ..models.simvq.image_processing_simvq import SimVQImageProcessor
    from ..models.simvq.modeling_simvq import SimVQModel

    source = Path(source)
    ckpt_path = _find_checkpoint(source)
    config_path = _find_config(ckpt_path, source, config)
    say(f"{SOURCE}: reading {config_path}")
    cfg = config_from_yaml(_read_yaml(config_path), str(config_path))
    say(f"{SOURCE}: reading {ckpt_path} ({human_bytes(ckpt_path.stat().st_size)})")
    ckpt = load_lightning_checkpoint(ckpt_path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{ckpt_path}: expected a Lightning checkpoint with a 'state_dict' (or a state dict)")
    model = SimVQModel(cfg)
    expected = list(model.state_dict())
    mapped, used = map_state_dict(state, expected, weights)
    for k, v in mapped.items():
        want = model.state_dict()[k].shape
        if not isinstance(v, torch.Tensor) or v.shape != want:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{ckpt_path}: {k}: checkpoint shape {got} does not match the config's {tuple(want)} "
                             f"({config_path.name})")
    say(f"{SOURCE}: {len(mapped)} tensors ({used} weights) match; writing {output}")
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    note = (f"Converted from {ckpt_path.name} with {config_path.name} by hfzoo.convert.simvq_ckpt "
            f"({used} weights; ignored {', '.join(IGNORED_PREFIXES)}*"
            f"{'' if used == 'ema' else ' and ' + EMA_PREFIX + '*'}).\n")
    return save_pretrained_atomic(output, model, SimVQImageProcessor(size=cfg.resolution),
                                  files={"CONVERSION.md": note}, overwrite=overwrite)
