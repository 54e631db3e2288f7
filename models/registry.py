"""Registry of codec models: name -> (class, default config).

Zoo keys (``models/zoo.py``) equal registry keys. Registering a name twice raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

from models.hyperprior import GDNHyperprior
from models.mlp3d import MLP3D

__all__ = ["ModelEntry", "create", "get", "names", "register"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered codec model: its class and the keyword config it is built with."""

    name: str
    cls: type[nn.Module]
    config: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, cls: type[nn.Module], config: dict | None = None) -> ModelEntry:
    """Add ``name``; raises ``KeyError`` if it is already registered."""
    if name in _REGISTRY:
        raise KeyError(f"codec model {name!r} is already registered")
    entry = ModelEntry(name, cls, MappingProxyType(dict(config or {})))
    _REGISTRY[name] = entry
    return entry


def get(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown codec model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **overrides) -> nn.Module:
    """Instantiate ``name`` with its default config updated by ``overrides``."""
    entry = get(name)
    return entry.cls(**{**entry.config, **overrides})


register("gdn-hyperprior", GDNHyperprior, {"N": 64, "M": 128})
#: the same codec with GDN / inverse GDN replaced by LeakyReLU(26/256): every layer a DPU operator
register("dpu-hyperprior", GDNHyperprior, {"N": 64, "M": 128, "transform": "leaky"})
#: seed 001's lossless voxel predictor (volumes): the MLP over a 3-D pyramid / cube of the previous slices
register("mlp3d-pyramid", MLP3D, {"sampling": "pyramid", "hidden": (1024, 512, 256, 128)})
register("mlp3d-cube", MLP3D, {"sampling": "cube", "hidden": (1024, 512, 256, 128)})
