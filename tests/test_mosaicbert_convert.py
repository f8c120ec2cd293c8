"""Conversion from MosaicML's formats: a Hub folder (bin and safetensors) and a Composer .pt, checked
against the padded per-layer oracle written from the published formulas; clear errors on bad keys."""

import json

import pytest
import torch
from helpers import rel_err
from mosaicbert_padded_reference import padded_forward
from safetensors.torch import save_file

from hfzoo.convert import converters, mosaicml_bert
from hfzoo.ops.dispatch import use_backend

CFG = {"vocab_size": 61, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
       "intermediate_size": 20, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2,
       "alibi_starting_size": 512, "attention_probs_dropout_prob": 0.0, "model_type": "bert",
       "architectures": ["BertForMaskedLM"],
       "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"}}


def mosaic_state_dict(cfg, head="mlm", seed=0):
    """Random tensors under the key names and shapes of MosaicML's bert_layers.py."""
    g = torch.Generator().manual_seed(seed)
    h, i, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"bert.embeddings.word_embeddings.weight": r(V, h),
          "bert.embeddings.token_type_embeddings.weight": r(cfg["type_vocab_size"], h),
          "bert.embeddings.LayerNorm.weight": 1 + r(h), "bert.embeddings.LayerNorm.bias": r(h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}"
        sd.update({f"{p}.attention.self.Wqkv.weight": r(3 * h, h), f"{p}.attention.self.Wqkv.bias": r(3 * h),
                   f"{p}.attention.output.dense.weight": r(h, h), f"{p}.attention.output.dense.bias": r(h),
                   f"{p}.attention.output.LayerNorm.weight": 1 + r(h), f"{p}.attention.output.LayerNorm.bias": r(h),
                   f"{p}.mlp.gated_layers.weight": r(2 * i, h), f"{p}.mlp.wo.weight": r(h, i),
                   f"{p}.mlp.wo.bias": r(h), f"{p}.mlp.layernorm.weight": 1 + r(h), f"{p}.mlp.layernorm.bias": r(h)})
    if head == "mlm":
        sd.update({"cls.predictions.transform.dense.weight": r(h, h), "cls.predictions.transform.dense.bias": r(h),
                   "cls.predictions.transform.LayerNorm.weight": 1 + r(h),
                   "cls.predictions.transform.LayerNorm.bias": r(h), "cls.predictions.decoder.bias": r(V)})
        sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    else:
        sd.update({"bert.pooler.dense.weight": r(h, h), "bert.pooler.dense.bias": r(h),
                   "classifier.weight": r(3, h), "classifier.bias": r(3)})
    return sd


def inputs():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, CFG["vocab_size"], (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids * mask, mask


def check_parity(folder, sd):
    from transformers import AutoModelForMaskedLM

    import hfzoo  # noqa: F401  (registers the Auto classes)

    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    ids, mask = inputs()
    _, ref_logits = padded_forward(sd, CFG, ids, mask)
    with torch.no_grad(), use_backend("reference"):
        logits = model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert rel_err(logits[keep], ref_logits[keep]) < 1e-5
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_hub_folder_converts_with_output_parity(tmp_path, fmt):
    src = tmp_path / "mosaic-bert"
    src.mkdir()
    sd = mosaic_state_dict(CFG)
    (src / "config.json").write_text(json.dumps(CFG))
    (src / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(CFG["vocab_size"])))
    if fmt == "bin":
        torch.save(sd, src / "pytorch_model.bin")
    else:
        save_file({k: v for k, v in sd.items() if k != "cls.predictions.decoder.weight"}, src / "model.safetensors")
    out = mosaicml_bert.convert(src, tmp_path / "out")
    assert (out / "model.safetensors").is_file() and (out / "vocab.txt").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "hfzoo_mosaicbert" and "bert_layers" not in json.dumps(cfg.get("auto_map", {}))
    check_parity(out, sd)
    with pytest.raises(FileExistsError):
        mosaicml_bert.convert(src, tmp_path / "out")


def test_composer_checkpoint_with_model_prefix(tmp_path):
    sd = mosaic_state_dict(CFG, seed=1)
    ckpt = {"state": {"model": {f"model.{k}": v for k, v in sd.items()},
                      "integrations": {"huggingface": {"model": {"config": {"content": CFG}}}}},
            "rng": [{"torch": torch.zeros(3, dtype=torch.uint8)}]}
    torch.save(ckpt, tmp_path / "ep1-ba10-rank0.pt")
    out = mosaicml_bert.convert(tmp_path / "ep1-ba10-rank0.pt", tmp_path / "out")
    check_parity(out, sd)
    # without a stored config, config= is required
    del ckpt["state"]["integrations"]
    torch.save(ckpt, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="config"):
        mosaicml_bert.convert(tmp_path / "bare.pt", tmp_path / "out2")
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    check_parity(mosaicml_bert.convert(tmp_path / "bare.pt", tmp_path / "out2", config=tmp_path / "config.json"), sd)


def test_sequence_classification_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    import hfzoo  # noqa: F401

    sd = mosaic_state_dict(CFG, head="cls", seed=2)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CFG))
    torch.save(sd, src / "pytorch_model.bin")
    model = AutoModelForSequenceClassification.from_pretrained(mosaicml_bert.convert(src, tmp_path / "out")).eval()
    ids, mask = inputs()
    seq, _ = padded_forward(sd, CFG, ids, mask)
    pooled = torch.tanh(seq[:, 0] @ sd["bert.pooler.dense.weight"].double().T + sd["bert.pooler.dense.bias"].double())
    ref = pooled @ sd["classifier.weight"].double().T + sd["classifier.bias"].double()
    with torch.no_grad(), use_backend("reference"):
        assert rel_err(model(input_ids=ids, attention_mask=mask).logits, ref) < 1e-5


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CFG))
    sd = mosaic_state_dict(CFG)
    torch.save({**sd, "bert.encoder.layer.0.mlp.extra.weight": torch.zeros(2)}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unexpected \['bert.encoder.layer.0.mlp.extra.weight'\]"):
        mosaicml_bert.convert(src, tmp_path / "out")
    torch.save({k: v for k, v in sd.items() if k != "bert.encoder.layer.1.mlp.wo.bias"}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing \['bert.encoder.layer.1.mlp.wo.bias'\]"):
        mosaicml_bert.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no model.safetensors"):
        mosaicml_bert.convert(tmp_path, tmp_path / "out")
    torch.save({"state": {"model": sd}, "opt": torch.optim.SGD}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only"):
        mosaicml_bert.convert(tmp_path / "pickled.pt", tmp_path / "out")


def test_registered_converter():
    assert converters()["mosaicml-bert"] is mosaicml_bert
