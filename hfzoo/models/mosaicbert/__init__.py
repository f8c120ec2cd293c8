"""MosaicBERT: BERT with ALiBi, GeGLU and padding-free variable-length attention."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def _tiny_config():
    from .configuration_mosaicbert import MosaicBertConfig

    return MosaicBertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, alibi_starting_size=32)


def _example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, config.vocab_size, (2, 11), generator=g)
    attention_mask = torch.ones(2, 11, dtype=torch.long)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = config.pad_token_id
    return {"input_ids": input_ids, "attention_mask": attention_mask}


_MODELING = "modeling_mosaicbert"

ARCHITECTURE = Architecture(
    name="mosaicbert",
    title="MosaicBERT",
    package=__name__,
    model_type="hfzoo_mosaicbert",
    config="configuration_mosaicbert.MosaicBertConfig",
    models={
        "AutoModel": f"{_MODELING}.MosaicBertModel",
        "AutoModelForMaskedLM": f"{_MODELING}.MosaicBertForMaskedLM",
        "AutoModelForSequenceClassification": f"{_MODELING}.MosaicBertForSequenceClassification",
        "AutoModelForTokenClassification": f"{_MODELING}.MosaicBertForTokenClassification",
    },
    summary="BERT encoder with ALiBi, a GeGLU feed-forward and padding-free variable-length attention",
    paper="https://arxiv.org/abs/2312.17482",
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-mosaicbert",
    kernel_ops=("varlen_alibi", "geglu", "softmax_ce", "residual_ln"),
    demo="mosaicbert_demo",
    converters=("mosaicml_bert",),
    card_template="mosaicbert.md",
    pipeline_tag="fill-mask",
    supports_packing=True,
    lora_target_modules=("Wqkv", "attention.output.dense", "gated_layers", "wo"),
)

__getattr__ = lazy_exports(__name__, {
    "MosaicBertConfig": "configuration_mosaicbert", "MosaicBertModel": _MODELING, "MosaicBertForMaskedLM": _MODELING,
    "MosaicBertForSequenceClassification": _MODELING, "MosaicBertForTokenClassification": _MODELING,
})

__all__ = ["ARCHITECTURE", "MosaicBertConfig", "MosaicBertModel", "MosaicBertForMaskedLM",
           "MosaicBertForSequenceClassification", "MosaicBertForTokenClassification"]
