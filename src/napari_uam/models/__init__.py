"""Model zoo: UAM, its ablations and the paper's baselines behind one registry.

>>> model = build_model("uam", n_features=96, n_classes=2)
>>> logits = model(torch.randn(8, 96))      # (8, 2); model.aux_loss holds the MoE balance loss

Every model maps a (batch, n_features) table of normalised features to (batch, n_classes)
logits, and exposes ``aux_loss`` (MoE load balancing, 0 without MoE), ``name`` and ``config``
(enough to rebuild it: ``build_model(**model.config)``-style, see :func:`build_model`).
"""

from __future__ import annotations

from .baselines import build_baseline
from .layers import CellClassifierNet
from .ssm import BACKENDS, Mamba, set_ssm_backend
from .uam import build_uam

#: Registry name -> (builder, one-line description).
MODELS = {
    "uam": (build_uam, "UAM: Amamba + Amamba-MoE layers per block (the paper's model)"),
    "uam-l": (build_uam, "UAM-L: Amamba layers only"),
    "uam-m": (build_uam, "UAM-M: Amamba-MoE layers only"),
    "trans": (build_baseline, "Transformer: self-attention + MLP"),
    "trans-moe": (build_baseline, "Transformer-MoE: self-attention + top-k MoE"),
    "mamba": (build_baseline, "Mamba: selective SSM blocks"),
    "mamba-moe": (build_baseline, "Mamba-MoE: Mamba + top-k MoE"),
    "jamba": (build_baseline, "Jamba: 1:3 attention:Mamba, MoE every other layer"),
}

#: Defaults of every config key (sizes chosen so UAM has a few 10^4 weights, as in the paper).
DEFAULT_CONFIG = {
    "d_model": 16,  # token width
    "n_blocks": 4,  # blocks (the paper's 4)
    "token_size": 8,  # features per token (F features -> ceil(F / 8) tokens)
    "n_heads": 2,
    "d_state": 8,  # SSM state per channel
    "d_conv": 4,
    "expand": 1,  # Mamba inner width = expand * d_model
    "n_experts": 4,
    "top_k": 2,
    "expert_hidden": 16,
    "ffn_hidden": 32,
    "attn_every": 4,  # Jamba: one attention layer per 4 layers
    "backend": "auto",  # SSM backend: auto | torch | mamba_ssm
}


def list_models() -> list[str]:
    """Registered architecture names."""
    return list(MODELS)


def build_model(name: str, n_features: int, n_classes: int, **config) -> CellClassifierNet:
    """Build architecture ``name`` for ``n_features`` inputs and ``n_classes`` outputs.

    Args:
        name: a key of :data:`MODELS` (case-insensitive).
        n_features: features per cell.
        n_classes: number of classes.
        **config: overrides of :data:`DEFAULT_CONFIG`.

    Returns:
        The model; ``model.config`` holds every setting (n_features and n_classes included).

    Raises:
        ValueError: unknown architecture or config key.
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"Unknown model {name!r}; registered models: {', '.join(MODELS)}.")
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"Unknown config keys {sorted(unknown)} for model {key!r}; known: {sorted(DEFAULT_CONFIG)}.")
    if config.get("backend", "auto") not in BACKENDS:
        raise ValueError(f"Unknown SSM backend {config['backend']!r}; choose one of {BACKENDS}.")
    cfg = {**DEFAULT_CONFIG, **config, "n_features": int(n_features), "n_classes": int(n_classes)}
    return MODELS[key][0](key, cfg)


def count_parameters(model) -> int:
    """Number of trainable weights."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BACKENDS",
    "DEFAULT_CONFIG",
    "MODELS",
    "CellClassifierNet",
    "Mamba",
    "build_model",
    "count_parameters",
    "list_models",
    "set_ssm_backend",
]
