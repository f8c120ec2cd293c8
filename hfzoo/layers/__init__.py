"""Building blocks shared by hfzoo's models: packing, norms, short convolution, MLPs, rotary positions, the
recurrent-state cache, task losses, vision pieces and the common ``PreTrainedModel`` base.

Each block lives in its own small module; import from the module (``from ...layers.packing import Packing``)
so the exporter can flatten it into a model's remote code. Layers import only ``hfzoo.ops`` and
``hfzoo.utils`` (and torch/transformers); models import layers, never another model.
"""
