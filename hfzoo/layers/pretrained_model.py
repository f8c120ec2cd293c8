"""The base class of every hfzoo ``PreTrainedModel``.

All hfzoo models derive from ``HfzooPreTrainedModel`` so that behaviour common to the whole zoo (for example
how ``save_pretrained`` writes a folder the Hub can load without hfzoo) is added in one place.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from ..utils.remote_code import StandaloneSaveMixin


class HfzooPreTrainedModel(StandaloneSaveMixin, PreTrainedModel):
    """``PreTrainedModel`` plus what every hfzoo model shares. Subclasses set ``config_class`` and the usual
    capability flags; nothing here changes parameter names or checkpoints.

    ``save_pretrained``/``push_to_hub`` (from ``StandaloneSaveMixin``) also write the flattened remote code and
    ``auto_map``, atomically, so the folder loads with ``trust_remote_code=True`` where hfzoo is not installed."""

    # Heads reduce their losses by ``num_items_in_batch`` when the Trainer passes it (see layers/losses.py).
    accepts_loss_kwargs = True


__all__ = ["HfzooPreTrainedModel"]
