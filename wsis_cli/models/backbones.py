"""ResNet feature extractors with weights from ImageNet (torchvision), a local file, or none.

``--weights`` takes ``imagenet`` (torchvision's ImageNet weights: downloaded once into the torch
hub cache; offline, a clear error naming ``none`` and local paths), ``none`` (random init) or
a path to a state dict (a torchvision ResNet ``.pth``, or one saved with keys under
``backbone.`` or ``module.``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

from wsis_cli.errors import WsisError

__all__ = ["BACKBONES", "ResNetFeatures", "build_resnet", "resolve_weights", "hub_state_dict", "load_state_dict"]

# name -> (torchvision builder name, weights enum name, channels of the last stage)
BACKBONES = {  # the classifier's; wsis_cli.models.CLASSIFIER_BACKBONES names them without torch
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
}
WEIGHTS_HELP = "imagenet (torchvision, needs the download or the hub cache), none (random init) or a local .pth file"


def resolve_weights(weights: str) -> str:
    """``imagenet``, ``none`` or an existing file path; anything else is a WsisError."""
    if weights in ("imagenet", "none"):
        return weights
    if not Path(weights).is_file():
        raise WsisError(f"--weights {weights}: no such file (give {WEIGHTS_HELP})")
    return weights


class ResNetFeatures(nn.Module):
    """The convolutional part of a torchvision ResNet (no pooling, no fc).

    ``forward(x)`` with ``x (FloatTensor[B, 3, H, W])`` returns ``(FloatTensor[B, C, H/s, W/s])``
    where ``s`` is :attr:`stride` (16: the last stage keeps the resolution of the one before it,
    as PRM's classifier does, so small objects keep a peak of their own).
    ``stem_and_layer1(x)`` and ``rest(f)`` split the same computation at stride 4, where peak
    response maps are read.
    """

    def __init__(self, resnet: nn.Module, channels: int):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        first = self.layer4[0]
        for conv in (getattr(first, "conv2", None) if hasattr(first, "conv3") else first.conv1,
                     first.downsample[0] if first.downsample is not None else None):
            if conv is not None:
                conv.stride = (1, 1)
        self.channels = channels
        self.stride = 16

    def stem_and_layer1(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))

    def rest(self, f: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(f)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.stem_and_layer1(x))


def load_state_dict(path: str) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input fault
        raise WsisError(f"--weights {path}: not a readable torch state dict ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise WsisError(f"--weights {path}: holds a {type(sd).__name__}, not a state dict")
    return sd


def hub_state_dict(url: str, option: str = "imagenet") -> dict:
    """torchvision's weights (ImageNet, or COCO for ``option="coco"``) from the torch hub cache,
    downloaded there first when absent (the "Downloading" line torch prints goes to stderr, not
    stdout)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                      weights_only=True)
    except Exception as e:  # noqa: BLE001 - offline (URLError is an OSError), a torn or foreign cache file
        raise WsisError(f"--weights {option}: cannot fetch {url} ({type(e).__name__}); offline, use --weights none "
                        f"or a local file (--weights PATH), or put the file in {hub}") from None


def build_resnet(name: str, *, weights: str = "none") -> ResNetFeatures:
    """A :class:`ResNetFeatures` for ``name`` in :data:`BACKBONES` with ``weights`` (see the
    module docstring). Raises WsisError for an unknown name, an unusable file, or ImageNet
    weights that cannot be fetched."""
    import torchvision

    if name not in BACKBONES:
        raise WsisError(f"--backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    builder_name, enum_name, channels = BACKBONES[name]
    builder = getattr(torchvision.models, builder_name)
    weights = resolve_weights(weights)
    resnet = builder(weights=None)
    if weights == "imagenet":
        url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
        try:
            resnet.load_state_dict(hub_state_dict(url))
        except RuntimeError as e:  # a cache file that holds other weights
            first = (str(e).strip().splitlines() or [""])[0]
            raise WsisError(f"--weights imagenet: the cached file for {url} does not fit {name} ({first})") from None
    elif weights != "none":
        sd = load_state_dict(weights)
        own = resnet.state_dict()
        picked = {}
        for k, v in sd.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                continue
            for prefix in ("module.", "backbone.", "features."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
            if k in own and not k.startswith("fc."):
                if tuple(own[k].shape) != tuple(v.shape):
                    raise WsisError(f"--weights {weights}: {k} has shape {tuple(v.shape)}, "
                                    f"{name} needs {tuple(own[k].shape)}")
                picked[k] = v
        missing = [k for k in own if not k.startswith("fc.") and k not in picked
                   and not k.endswith("num_batches_tracked")]
        if missing:
            raise WsisError(f"--weights {weights}: not {name} weights ({len(missing)} tensors missing, "
                            f"e.g. {missing[0]})")
        resnet.load_state_dict(picked, strict=False)
    return ResNetFeatures(resnet, channels)


from wsis_cli.models import CLASSIFIER_BACKBONES  # noqa: E402

assert tuple(sorted(BACKBONES)) == tuple(sorted(CLASSIFIER_BACKBONES))
