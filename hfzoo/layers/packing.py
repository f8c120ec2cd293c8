"""Packing: where the real tokens of a batch are, as one varlen sequence.

A ``Packing`` holds the flat indices of the kept tokens of a ``[B, T]`` batch, the ``cu_seqlens`` offsets of
each document inside the packed ``[total, ...]`` tensor and the longest document. Build it from a padding
mask (``from_mask``: one document per row), from ``position_ids`` that restart at every document
(``from_position_ids``: what ``DataCollatorWithFlattening`` produces), or from explicit ``cu_seqlens``; then
``pack`` ``[B, T, ...] -> [total, ...]`` and ``unpack`` back (zeros where nothing was kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Packing:
    def __init__(self, indices: torch.Tensor | None, cu_seqlens: torch.Tensor, batch: int, seqlen: int,
                 max_seqlen: int | None = None):
        self.indices = indices          # [total] flat positions b * T + t of the kept tokens; None = all tokens
        self.cu_seqlens = cu_seqlens    # [N + 1] int32 document offsets in the packed tensor
        self.batch, self.seqlen = batch, seqlen
        self._max_seqlen = max_seqlen
        self._document_ids = None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Packing:
        """One document per row: the tokens where the ``[B, T]`` 0/1 mask is set (they need not be contiguous)."""
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [batch, length]; got shape {tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        lengths = mask.sum(1, dtype=torch.int32)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
        cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        return cls(indices, cu_seqlens, mask.shape[0], mask.shape[1])

    @classmethod
    def from_position_ids(cls, position_ids: torch.Tensor) -> Packing:
        """Every token kept; a document starts at each row start and wherever the position does not follow the
        previous one by 1 (a restart). ``[B, T]`` rows are concatenated into one sequence."""
        if position_ids.dim() != 2:
            raise ValueError(f"position_ids must be [batch, length]; got shape {tuple(position_ids.shape)}")
        B, T = position_ids.shape
        starts = torch.ones(B, T, dtype=torch.bool, device=position_ids.device)
        starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
        first = torch.nonzero(starts.flatten(), as_tuple=False).flatten().to(torch.int32)
        cu_seqlens = torch.cat([first, first.new_tensor([B * T])])
        return cls(None, cu_seqlens, B, T)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, batch: int, seqlen: int) -> Packing:
        """Explicit document offsets over the ``batch * seqlen`` tokens (all kept)."""
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
            raise ValueError(f"cu_seqlens must be a 1-D integer tensor [0, ..., total]; got {cu_seqlens!r}")
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != batch * seqlen or bool((cu_seqlens.diff() < 0).any()):
            raise ValueError(f"cu_seqlens must start at 0, end at batch * length = {batch * seqlen} and never "
                             f"decrease; got {cu_seqlens.tolist()}")
        return cls(None, cu_seqlens.to(torch.int32).contiguous(), batch, seqlen)

    @staticmethod
    def position_ids_are_packed(position_ids: torch.Tensor | None) -> bool:
        """True when some row's positions restart (several documents flattened into one row)."""
        if position_ids is None or position_ids.dim() != 2 or position_ids.shape[1] < 2:
            return False
        return bool((position_ids[:, 1:] - position_ids[:, :-1] != 1).any())

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def lengths(self) -> torch.Tensor:
        return self.cu_seqlens.diff()

    @property
    def max_seqlen(self) -> int:
        """Longest document (a Python int, computed once)."""
        if self._max_seqlen is None:
            self._max_seqlen = int(self.lengths.max()) if self.lengths.numel() else 0
        return self._max_seqlen

    @property
    def num_tokens(self) -> int:
        return self.batch * self.seqlen if self.indices is None else self.indices.numel()

    def document_ids(self) -> torch.Tensor:
        """``[B, T]`` index of the document of each token (-1 where a token is not kept); computed once."""
        if self._document_ids is None:
            self._document_ids = self._make_document_ids()
        return self._document_ids

    def positions(self) -> torch.Tensor:
        """``[B, T]`` position of each kept token inside its document (0 at its first token; 0 where not kept)."""
        ids = self.document_ids()
        flat = torch.arange(self.num_tokens, device=ids.device)
        doc = ids.flatten()[self.indices] if self.indices is not None else ids.flatten()
        pos = flat - self.cu_seqlens.long()[doc]
        return self.unpack(pos)

    def _make_document_ids(self) -> torch.Tensor:
        total = self.batch * self.seqlen
        ids = torch.repeat_interleave(torch.arange(self.lengths.numel(), device=self.cu_seqlens.device),
                                      self.lengths.long())
        if self.indices is None:
            return ids.view(self.batch, self.seqlen)
        out = torch.full((total,), -1, dtype=ids.dtype, device=ids.device)
        return out.index_copy(0, self.indices, ids).view(self.batch, self.seqlen)

    # -- moving tensors ---------------------------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...] -> [total, ...]`` (the kept tokens, row-major)."""
        flat = t.flatten(0, 1)
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[total, ...] -> [B, T, ...]`` with zeros at the tokens that were not kept."""
        if self.indices is None:
            return packed.reshape(self.batch, self.seqlen, *packed.shape[1:])
        out = packed.new_zeros(self.batch * self.seqlen, *packed.shape[1:]).index_copy(0, self.indices, packed)
        return out.view(self.batch, self.seqlen, *packed.shape[1:])


# Keyword arguments that describe packed batches (``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``,
# ``return_seq_idx=True``); ``packed_documents`` consumes them so that they never vanish into ``**kwargs``.
PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def packed_documents(batch: int, seqlen: int, *, cu_seqlens=None, position_ids=None, attention_mask=None,
                     kwargs: dict | None = None) -> Packing | None:
    """The documents of a packed batch, or None when the batch is not packed.

    Sources, in order: ``cu_seqlens`` (also read from ``kwargs["cu_seq_lens_q"]``; ``cu_seq_lens_k`` must equal
    it), then ``position_ids`` that restart inside a row. Packed batches carry no padding: a padding mask with
    zeros and explicit ``cu_seqlens`` is an error, and restarting ``position_ids`` beside padding are read as
    the padding-derived positions ``generate()`` makes, not as packing. The packing keywords are removed from
    ``kwargs``.
    """
    kwargs = {} if kwargs is None else kwargs
    alias, other = kwargs.pop("cu_seq_lens_q", None), kwargs.pop("cu_seq_lens_k", None)
    for name in PACKING_KWARGS:
        kwargs.pop(name, None)       # max lengths and document ids follow from cu_seqlens / position_ids
    if alias is not None:
        if cu_seqlens is not None and not torch.equal(alias.to(cu_seqlens.device), cu_seqlens):
            raise ValueError("cu_seqlens and cu_seq_lens_q differ; pass one")
        cu_seqlens = alias
    if other is not None and (cu_seqlens is None or not torch.equal(other.to(cu_seqlens.device), cu_seqlens)):
        raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q (self-attention over the same documents)")
    has_padding = attention_mask is not None and not bool(attention_mask.bool().all())
    if cu_seqlens is not None:
        if has_padding:
            raise ValueError("packed documents (cu_seqlens) take no padding mask: every token is real")
        return Packing.from_cu_seqlens(cu_seqlens, batch, seqlen)
    if not has_padding and Packing.position_ids_are_packed(position_ids):
        return Packing.from_position_ids(position_ids)
    return None


__all__ = ["PACKING_KWARGS", "Packing", "packed_documents"]
