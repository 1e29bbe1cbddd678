"""The ImageNet backbone file a training run starts from (torchvision's IMAGENET1K_V1 ResNet),
found by name and checked by content, or an error saying where to put it."""

from __future__ import annotations

from pathlib import Path

import torch

from atss_cli.config import TrainConfig
from atss_cli.errors import AtssError, param


def find_pretrained(depth: int, explicit: str = "", hub_dir: str | Path | None = None) -> Path | None:
    """torchvision's IMAGENET1K_V1 ResNet-`depth` file (`resnet50-0676ba61.pth`), checked by content:
    `explicit` (the file, or a folder holding it), else the torch hub cache's `checkpoints/`;
    None when neither has it. Another file of the family (V2 `resnet50-11ad3fa6.pth`) is an
    AtssError naming the file wanted, never taken instead."""
    from atss_cli.model.checkpoint import TORCHVISION_URL, check_imagenet_file, imagenet_file_name

    want = imagenet_file_name(depth)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            if not (path / want).is_file():
                raise AtssError(f"{param('pretrained')} {explicit}: no {want} in that folder "
                                f"(torchvision's IMAGENET1K_V1 ResNet-{depth}: {TORCHVISION_URL}{want})")
            path = path / want
        elif not path.is_file():
            raise AtssError(f"{param('pretrained')} {explicit}: no such file")
        check_imagenet_file(path, depth)
        return path
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / want
    if path.is_file():
        check_imagenet_file(path, depth)
        return path
    others = sorted(hub.glob(f"resnet{depth}-*.pth")) if hub.is_dir() else []
    if others:
        raise AtssError(f"{others[0]} is not the recipe's ImageNet weights: put torchvision's IMAGENET1K_V1 "
                        f"file {want} ({TORCHVISION_URL}{want}) in {hub} or give it with {param('pretrained')}, "
                        f"or train from random weights with {param('from_scratch')}")
    return None


def pretrained_weights(cfg: TrainConfig, hub_dir: str | Path | None = None) -> Path | None:
    """The ImageNet file this run starts from, or None for random init: an AtssError, saying where
    to put the file, when the config freezes stages or BatchNorm (which assume pretrained weights)
    and the file is not there, unless `cfg.from_scratch`."""
    from atss_cli.model.checkpoint import TORCHVISION_URL, imagenet_file_name

    if cfg.from_scratch or cfg.load_from:
        return None
    path = find_pretrained(cfg.depth, cfg.pretrained, hub_dir)
    if path is None and cfg.assumes_imagenet:
        hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
        want = imagenet_file_name(cfg.depth)
        raise AtssError(f"frozen_stages={cfg.frozen_stages} norm_eval={cfg.norm_eval} assume ImageNet weights: "
                        f"put {want} ({TORCHVISION_URL}{want}) in {hub} or give it with {param('pretrained')}, "
                        f"or train from random weights with {param('from_scratch')}")
    return path
