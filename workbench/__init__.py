"""workbench: a Jupyter-first workbench for sparse autoencoders on language models.

The pipeline, one module per step::

    models/hookpoints -> data -> capture -> store -> sae -> train -> metrics/evaluate
    dictionaries -> features (statistics), logit_effects -> site, neuronpedia (exports)
    intervene (SAE splices, error term kept) -> ablation, steer, attribute
    widgets (views) -> notebooks (stories)

Importing the package loads nothing heavy; the names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "workbench.models",
    "Model": "workbench.models",
    "token_contexts": "workbench.data",
    "capture": "workbench.capture",
    "CaptureConfig": "workbench.capture",
    "ActivationStore": "workbench.store",
    "SAE": "workbench.sae",
    "SAEConfig": "workbench.sae",
    "train": "workbench.train",
    "TrainConfig": "workbench.train",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from workbench.capture import CaptureConfig, capture
    from workbench.data import token_contexts
    from workbench.models import Model, load_model
    from workbench.sae import SAE, SAEConfig
    from workbench.store import ActivationStore
    from workbench.train import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
