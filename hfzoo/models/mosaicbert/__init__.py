"""MosaicBERT: BERT with ALiBi, GeGLU and padding-free variable-length attention."""

import torch

from ...registry import Architecture
from .configuration_mosaicbert import MosaicBertConfig
from .modeling_mosaicbert import (
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
)


def _tiny_config() -> MosaicBertConfig:
    return MosaicBertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, alibi_starting_size=32)


def _example_inputs(config: MosaicBertConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, config.vocab_size, (2, 11), generator=g)
    attention_mask = torch.ones(2, 11, dtype=torch.long)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = config.pad_token_id
    return {"input_ids": input_ids, "attention_mask": attention_mask}


ARCHITECTURE = Architecture(
    name="mosaicbert",
    title="MosaicBERT",
    config_class=MosaicBertConfig,
    auto_models={
        "AutoModel": MosaicBertModel,
        "AutoModelForMaskedLM": MosaicBertForMaskedLM,
        "AutoModelForSequenceClassification": MosaicBertForSequenceClassification,
        "AutoModelForTokenClassification": MosaicBertForTokenClassification,
    },
    summary="BERT encoder with ALiBi, a GeGLU feed-forward and padding-free variable-length attention",
    paper="https://arxiv.org/abs/2312.17482",
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-mosaicbert",
    lora_target_modules=("Wqkv", "attention.output.dense", "gated_layers", "wo"),
)

__all__ = ["ARCHITECTURE", "MosaicBertConfig", "MosaicBertModel", "MosaicBertForMaskedLM",
           "MosaicBertForSequenceClassification", "MosaicBertForTokenClassification"]
