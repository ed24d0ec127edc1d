"""The detector necks: the Enhanced-FPN's outputs match the FPN's in names and shapes for every
backbone, its bottom-up and short paths carry the lowest level to the top (which FPN's cannot),
and --neck fpn (or an old config without the key) is torchvision's FPN, weight for weight."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from wsis_cli.errors import WsisError
from wsis_cli.models.detector import build_detector
from wsis_cli.models.necks import NECKS, EnhancedFPN, build_neck, check_neck

from conftest import one_target, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_CHANNELS = [4, 8, 16, 32]
STRIDES = (4, 8, 16, 32)


def maps(seed: int = 0, sizes=(32, 16, 8, 4)) -> OrderedDict:
    """Backbone-like inputs: level k has IN_CHANNELS[k] channels and sizes[k] px a side."""
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((str(k), torch.randn(2, c, s, s, generator=g)) for k, (c, s) in
                       enumerate(zip(IN_CHANNELS, sizes)))


def neck(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_neck(name, in_channels=IN_CHANNELS, channels=8, strides=STRIDES).eval()


def test_names_and_sizes_are_the_fpns():
    x = maps()
    with torch.no_grad():
        want, got = neck("fpn")(x), neck("efpn")(x)
    assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in got.values()] == [tuple(v.shape) for v in want.values()]
    assert tuple(got["pool"].shape) == (2, 8, 2, 2)
    # sizes that round up (a 97 px image through a ResNet: 25, 13, 7, 4) fit too
    x = maps(sizes=(25, 13, 7, 4))
    with torch.no_grad():
        assert [v.shape for v in neck("efpn")(x).values()] == [v.shape for v in neck("fpn")(x).values()]


def top_change(model: torch.nn.Module, level: str = "3") -> float:
    """How much the output ``level`` moves when only the lowest input map changes."""
    x = maps(0)
    y = OrderedDict(x)
    y["0"] = x["0"] + torch.randn(x["0"].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float((model(x)[level] - model(y)[level]).abs().max())


def zero(modules: torch.nn.ModuleList) -> None:
    with torch.no_grad():
        for p in modules.parameters():
            p.zero_()


def test_the_lowest_map_reaches_the_top_level():
    # FPN's top level sees only the top input (its path runs top-down): a plain FPN fails this
    assert top_change(neck("fpn")) == 0.0 and top_change(neck("fpn"), "pool") == 0.0
    efpn = neck("efpn")
    assert top_change(efpn) > 1e-3 and top_change(efpn, "pool") > 1e-3
    # each route on its own carries it: the short path without the bottom-up convs ...
    short_only = neck("efpn")
    zero(short_only.down)
    assert top_change(short_only) > 1e-3
    # ... and the bottom-up path without the short one
    bottom_up_only = neck("efpn")
    zero(bottom_up_only.short)
    assert top_change(bottom_up_only) > 1e-3
    # and they are the only routes
    zero(short_only.short)
    assert top_change(short_only) == 0.0


def test_the_bottom_up_path_leaves_the_finest_level_fpns():
    """N_0 = P_0: the finest output is the top-down one; the top-down weights are FPN's."""
    fpn, efpn = neck("fpn"), neck("efpn")
    efpn.load_state_dict(fpn.state_dict(), strict=False)
    x = maps()
    with torch.no_grad():
        a, b = fpn(x), efpn(x)
    assert torch.equal(a["0"], b["0"]) and not torch.allclose(a["3"], b["3"])
    assert (b["3"] >= 0).all()  # the bottom-up fusion ends in a ReLU (Fig. 4)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3", "resnet50"])
def test_every_backbone_gives_the_fpns_pyramid(backbone):
    torch.manual_seed(0)
    fpn = build_detector(tiny_config(backbone=backbone)).backbone.eval()
    efpn = build_detector(tiny_config(backbone=backbone, neck="efpn")).backbone.eval()
    assert type(fpn.fpn) is FeaturePyramidNetwork and isinstance(efpn.fpn, EnhancedFPN)
    assert efpn.out_channels == fpn.out_channels == 32
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want, got = fpn(image), efpn(image)
    assert list(got) == list(want)
    assert [v.shape for v in got.values()] == [v.shape for v in want.values()]


def test_an_efpn_detector_trains_and_predicts():
    torch.manual_seed(0)
    model = build_detector(tiny_config(neck="efpn"))
    model.train()
    losses = model([torch.rand(3, 96, 96)], [one_target(True)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    extra = [p for name, p in model.backbone.fpn.named_parameters() if name.startswith(("down.", "short.", "fuse."))]
    assert extra and all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra if p.ndim > 1)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 80)])[0]
    assert out["masks"].shape[1:] == (1, 96, 80)


def test_fpn_is_torchvisions_weight_for_weight():
    """--neck fpn builds what the builder built before the option, tensor for tensor, and a
    config.json without "neck" (an older run) builds the same FPN."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    for width in (32, 256):
        torch.manual_seed(3)
        body = _resnet_fpn_extractor(resnet18(weights=None, norm_layer=torch.nn.BatchNorm2d), 5)
        if width != 256:
            body.fpn = FeaturePyramidNetwork([64, 128, 256, 512], width, extra_blocks=LastLevelMaxPool())
        want = body.state_dict()
        config = tiny_config(fpn_channels=width)
        assert config["neck"] == "fpn"
        old = {k: v for k, v in config.items() if k != "neck"}
        for cfg in (config, old):
            torch.manual_seed(3)
            got = build_detector(cfg).backbone.state_dict()
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_efpn_loads_an_fpn_detectors_top_down_weights(tmp_path):
    """--weights PATH (and coco, by the same names) fills the EFPN's FPN part; its extra layers
    keep their fresh initialisation."""
    torch.manual_seed(0)
    fpn = build_detector(tiny_config())
    torch.save(fpn.state_dict(), tmp_path / "fpn.pth")
    torch.manual_seed(1)
    fresh = build_detector(tiny_config(neck="efpn")).state_dict()
    torch.manual_seed(1)
    efpn = build_detector(tiny_config(neck="efpn"), weights=str(tmp_path / "fpn.pth")).state_dict()
    for key, value in fpn.state_dict().items():
        if key.startswith("backbone.fpn."):
            assert torch.equal(efpn[key], value), key
    extra = [k for k in efpn if k.startswith(("backbone.fpn.down.", "backbone.fpn.short.", "backbone.fpn.fuse."))]
    assert len(extra) == 3 * 3 * 2 and all(torch.equal(efpn[k], fresh[k]) for k in extra)


def test_bad_necks_and_pyramids_are_one_line_errors():
    assert NECKS == ("fpn", "efpn") and check_neck("efpn") == "efpn"
    with pytest.raises(WsisError, match=r"^--neck must be one of fpn, efpn, got 'panet'$"):
        tiny_config(neck="panet")
    with pytest.raises(WsisError, match="at least 2 backbone levels"):
        EnhancedFPN([8], 8, strides=[4])
    with pytest.raises(WsisError, match="the one below it or twice it, got \\[4, 16\\]"):
        EnhancedFPN([8, 8], 8, strides=[4, 16])
