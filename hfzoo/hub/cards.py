"""Model cards: ``model_cards/<arch>.md`` Jinja templates rendered through ``huggingface_hub.ModelCard``.

Templates start with ``---\\n{{ card_data }}\\n---`` and may use: ``model_id``, ``arch`` (the registry
entry: ``arch.title``, ``arch.summary``, ``arch.paper``, ``arch.model_type``), ``config`` (a dict),
``num_parameters`` (int), ``num_parameters_human`` ("1.2M"), ``auto_class`` (e.g.
"AutoModelForCausalLM"), ``model_class`` (class name), ``extra`` (free text, e.g. training notes),
``checkpoint`` (the name of the shipped checkpoint being exported, e.g. "tiny-gla", else None: the card describes
that checkpoint's training only then), ``provenance`` (a sentence for models hfzoo did not train), ``install``
(how to install hfzoo from its source) and ``transformers_floor`` (the oldest transformers the folders load with).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_cards"


def template_path(arch_name: str) -> Path:
    """The card template of an architecture: its registry entry's ``card_template`` (default ``<name>.md``)."""
    from ..models import get_architecture

    arch = get_architecture(arch_name)
    path = TEMPLATE_DIR / (arch.card_template or f"{arch.name}.md")
    if not path.is_file():
        raise ValueError(f"no model card template for architecture {arch_name!r} (looked for {path})")
    return path


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# hfzoo is not on PyPI: cards say how to get it from its source
INSTALL = "hfzoo is not on PyPI: clone its source repository and run `pip install -e .` in the clone"
# the oldest transformers the tests load these folders with (5.17 lacks AutoImageProcessor without torchvision)
TRANSFORMERS_FLOOR = "5.18"

PROVENANCE = ("This model was not trained by hfzoo (it was converted from a research checkpoint or trained by its "
              "owner): its training data and results are those of its source.")


def render_card(model, model_id: str | None = None, extra: str = "", auto_class: str | None = None,
                checkpoint: str | None = None):
    """Render the card of an hfzoo model instance; returns a ``huggingface_hub.ModelCard``.

    ``checkpoint`` names the shipped checkpoint the model was loaded from (its card section on training applies).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from ..models import get_architecture

    arch = get_architecture(model.config.model_type)
    if auto_class is None:
        auto_class = next((a for a, c in arch.auto_models.items() if isinstance(model, c)), "AutoModel")
    n = sum(p.numel() for p in model.parameters())
    tag = arch.pipeline_tag if arch.auto_models.get(auto_class) is arch.main_model else _pipeline_tag(auto_class)
    data = ModelCardData(library_name="transformers", license="apache-2.0",
                         tags=["hfzoo", arch.name, "custom_code"], pipeline_tag=tag)
    return ModelCard.from_template(
        data, template_path=str(template_path(arch.name)),
        model_id=model_id or f"hfzoo-{arch.name}", arch=arch, config=model.config.to_dict(),
        num_parameters=n, num_parameters_human=human_count(n), auto_class=auto_class,
        model_class=type(model).__name__, extra=extra, checkpoint=checkpoint, provenance=PROVENANCE,
        install=INSTALL, transformers_floor=TRANSFORMERS_FLOOR)


def _pipeline_tag(auto_class: str) -> str | None:
    """The Hub task of a task head other than the architecture's main model (transformers' own mapping)."""
    return {
        "AutoModelForCausalLM": "text-generation",
        "AutoModelForMaskedLM": "fill-mask",
        "AutoModelForSequenceClassification": "text-classification",
        "AutoModelForTokenClassification": "token-classification",
        "AutoModelForImageClassification": "image-classification",
    }.get(auto_class)
