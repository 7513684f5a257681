"""Networks a bundle may name, resolved from a fixed allow-list (never an arbitrary import).

A medgen bundle records ``{"name": ..., "kwargs": {...}}``; :func:`build_network` rebuilds it
only if ``name`` is registered here, so loading a bundle can never import or run other code.
"""

from __future__ import annotations

import importlib

import torch

from medgen.errors import ModelError

# name -> "module:attribute". medgen's own networks need no entry: they are named
# "medgen.networks.<module>:<Class>" and accepted because they live inside medgen.networks.
NETWORKS: dict[str, str] = {
    "monai.UNet": "monai.networks.nets:UNet",
    "monai.SegResNet": "monai.networks.nets:SegResNet",
    "monai.PatchDiscriminator": "monai.networks.nets:PatchDiscriminator",
    "monai.SPADENet": "monai.networks.nets:SPADENet",
}


def register_network(name: str, target: str) -> None:
    """Add a network to the allow-list (used by medgen's own network modules)."""
    module = target.split(":")[0]
    if not (module.startswith("medgen.networks") or module.startswith("monai.networks")):
        raise ValueError(f"networks must live in medgen.networks or monai.networks, not {module}")
    NETWORKS[name] = target


def network_class(name: str) -> type:
    """The registered network class of ``name``.

    Raises:
        ModelError: the name is not registered or is not a network class.
    """
    target = NETWORKS.get(name)
    if target is None and name.startswith("medgen.networks.") and name.count(":") == 1:
        target = name  # medgen's own networks are named by "module:Class" directly
    if target is None:
        raise ModelError(f"unknown network '{name}'", fix="known networks: " + ", ".join(sorted(NETWORKS)))
    module_name, attr = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"unknown network '{name}'", fix="known networks: " + ", ".join(sorted(NETWORKS))) from exc
    # only network classes: never a function or module that happens to be importable from there
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelError(f"'{name}' is not a network class", fix="name a torch.nn.Module class of medgen.networks")
    return cls


def build_network(name: str, kwargs: dict, *, source: str | None = None) -> torch.nn.Module:
    """Instantiate a registered network.

    Raises:
        ModelError: the name is not registered, or the arguments do not build it (naming ``source``).
    """
    cls = network_class(name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"network '{name}' cannot be built from its arguments ({type(exc).__name__}: "
                         f"{str(exc)[:200]})", path=source, fix="correct network.kwargs (or re-export the model)") from exc
