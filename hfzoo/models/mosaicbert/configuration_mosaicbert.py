"""MosaicBERT configuration: the fields of ``transformers.BertConfig`` plus MosaicBERT's own."""

from __future__ import annotations

from transformers import PreTrainedConfig


class MosaicBertConfig(PreTrainedConfig):
    r"""Configuration of a MosaicBERT encoder (Portes et al., 2023).

    Field names and defaults follow ``BertConfig`` (BERT-base sizes), so a MosaicML ``config.json`` maps
    one to one. Differences from BERT: no position embeddings (ALiBi biases the attention instead), a
    GeGLU feed-forward with ``intermediate_size`` per half (``gated_layers`` is ``hidden -> 2 *
    intermediate``), and attention dropout off by default (the fast kernel has none).

    Args:
        alibi_starting_size: the sequence length the model was trained at (MosaicML pre-built an ALiBi
            bias of this size). Kept for compatibility; hfzoo computes the bias on the fly inside the
            attention kernel, so longer sequences need no rebuild.
        max_sequence_length: optional hard limit on tokens per sequence; ``None`` (default) means no limit
            (ALiBi has none intrinsically; memory is the only bound). Longer inputs raise ``ValueError``.
        max_position_embeddings: unused by the model (no position table); kept so BERT tooling that reads
            it (tokenizer defaults, pipelines) keeps working.
    """

    model_type = "hfzoo_mosaicbert"

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, intermediate_size: int = 3072, hidden_act: str = "gelu",
                 hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.0,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2, initializer_range: float = 0.02,
                 layer_norm_eps: float = 1e-12, pad_token_id: int | None = 0, classifier_dropout: float | None = None,
                 alibi_starting_size: int = 512, max_sequence_length: int | None = None,
                 tie_word_embeddings: bool = True, **kwargs):
        if hidden_size % num_attention_heads != 0:
            raise ValueError(f"MosaicBertConfig: hidden_size ({hidden_size}) must be a multiple of "
                             f"num_attention_heads ({num_attention_heads})")
        if max_sequence_length is not None and max_sequence_length < 1:
            raise ValueError(f"MosaicBertConfig: max_sequence_length must be None or >= 1; got {max_sequence_length}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        self.alibi_starting_size = alibi_starting_size
        self.max_sequence_length = max_sequence_length
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
