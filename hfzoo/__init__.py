"""hfzoo: research architectures as native Hugging Face models.

Importing hfzoo registers every architecture with the transformers Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` works for hfzoo checkpoints without remote code. The
registration is lazy: ``import hfzoo`` imports neither torch nor any model; the Auto classes import a model's
code the first time they need it (see ``hfzoo/registry.py``).
"""

__version__ = "0.1.0"

from .models import ARCHITECTURES, get_architecture  # noqa: E402
from .registry import checkpoint_path, register_all  # noqa: E402

register_all()

# hfzoo's default LoRA targets reach peft when (or if) peft is imported; peft itself is not imported here
from .peft.targets import install_import_hook as _install_peft_hook  # noqa: E402

_install_peft_hook()

__all__ = ["ARCHITECTURES", "checkpoint_path", "get_architecture", "register_all", "__version__"]
