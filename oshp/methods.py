"""One registry of methods, so the CLI and the notebooks pick a method by name.

A method entry says how to build its model from a run configuration and which settings (k-way,
1-way) the paper gives it. Contenders register here too (one entry each).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Method:
    name: str
    display: str
    ways: tuple[str, ...]
    build: Callable[..., nn.Module]
    description: str = ""
    options: dict = field(default_factory=dict)


def _build_eopnet(num_classes: int, way: str, backbone: str, pretrained: bool = False,
                  backbone_weights: str | None = None, **model_options) -> nn.Module:
    from .models.eopnet import EOPNet, EOPNetConfig

    ablation = model_options.pop("ablation", None)
    release = model_options.pop("release_compat", False)
    fields = dict(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                  backbone_weights=backbone_weights)
    if ablation:  # a row of Table 4 sets the module switches
        fields.update(dataclasses.asdict(EOPNetConfig.ablation(ablation)) | fields)
    fields.update(model_options)
    return EOPNet(EOPNetConfig.release_compat(**fields) if release else EOPNetConfig(**fields))


METHODS: dict[str, Method] = {
    "eopnet": Method("eopnet", "EOP-Net", ("k", "1"), _build_eopnet,
                     "End-to-end One-shot human Parsing network (TPAMI 2023), paper sections 4 and 6.1"),
}


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def build_model(method: str, *, num_classes: int, way: str, backbone: str, pretrained: bool = False,
                backbone_weights: str | None = None, **model_options) -> nn.Module:
    m = get_method(method)
    if way not in m.ways:
        raise ValueError(f"{m.display} is evaluated {' and '.join(w + '-way' for w in m.ways)} in the paper, "
                         f"not {way}-way")
    return m.build(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                   backbone_weights=backbone_weights, **model_options)
