import pytest
import torch
import torch.nn.functional as F
import torchvision

from torch.utils.flop_counter import FlopCounterMode

from tutorials_pkg.blocks.mobilenet import (
    BasicConv2d,
    DepthwiseSeparableConv,
    InvertedResidual,
    MobileNetV1,
    MobileNetV1Flat,
    MobileNetV1WithFixedPool,
    MobileNetV1WithFixedPoolAndLastStride1,
    MobileNetV2,
    assert_same_network,
    count_macs,
)
from tutorials_pkg.blocks.unet import UNet, UNetWithoutAlignment, Up, UpWithoutAlignment
from tutorials_pkg.definition import count_parameters


@pytest.fixture(scope="module", params=[False, True], ids=["transposed", "bilinear"])
def unet(request) -> UNet:
    return UNet(n_channels=3, n_classes=2, bilinear=request.param).eval()


# --- U-Net ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(16, 16), (17, 17), (32, 32), (33, 20), (16, 31), (25, 18)])
def test_unet_output_has_the_input_size(unet, size):
    with torch.no_grad():
        out = unet(torch.randn(1, 3, *size))
    assert out.shape == (1, 2, *size)


def test_unet_parameter_counts_match_milesial_pytorch_unet():
    # figures of github.com/milesial/Pytorch-UNet for UNet(n_channels=3, n_classes=2)
    assert count_parameters(UNet(3, 2, bilinear=False)) == 31_037_698
    assert count_parameters(UNet(3, 2, bilinear=True)) == 17_263_042


def test_up_pads_the_upsampled_map_to_the_skip_size():
    up = Up(128, 64, bilinear=False).eval()
    out = up(torch.randn(1, 128, 4, 4), torch.randn(1, 64, 9, 11))
    assert out.shape == (1, 64, 9, 11)


@pytest.mark.parametrize("size", [(15, 16), (16, 15), (8, 8)])
def test_unet_too_small_input_names_the_size_it_needs(size):
    model = UNet().eval()
    with pytest.raises(ValueError, match=rf"H and W of at least 16, got {size[0]}x{size[1]}"):
        model(torch.randn(1, 3, *size))


def test_unet_wrong_channels_or_rank_get_a_clear_error():
    model = UNet(n_channels=1).eval()
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\), got \(1, 3, 32, 32\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\), got \(1, 32, 32\)"):
        model(torch.randn(1, 32, 32))


def test_unet_training_batch_of_one_at_the_smallest_size_gets_torchs_batch_norm_error():
    """A 1x1 bottom in training mode: torch's own ValueError says what is wrong (not reworded)."""
    model = UNet(bilinear=True).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model(torch.randn(1, 3, 16, 16))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)
    assert model(torch.randn(1, 3, 16, 32)).shape == (1, 2, 16, 32)


def test_unet_is_fx_traceable_by_torchvisions_feature_extraction():
    """The input check is one recorded call (torch.fx.wrap), not Python control flow FX stops in."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = UNet().eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes and eval_nodes[:2] == ["x", "check_unet_input"]
    assert {"up4.conv.double_conv.5", "outc.conv"} <= set(eval_nodes)  # leaf modules' calls
    extractor = create_feature_extractor(model, {"down4": "bottom", "outc": "out"})
    x = torch.randn(1, 3, 33, 17)
    with torch.no_grad():
        features = extractor(x)
        assert features["bottom"].shape == (1, 1024, 2, 1)
        assert torch.equal(features["out"], model(x))
        # the check is kept in the traced graph (its result is used), so a graph of early
        # layers only still refuses a small input with the same clear error
        early = create_feature_extractor(model, ["down2"])
        with pytest.raises(ValueError, match="H and W of at least 16, got 8x8"):
            early(torch.randn(1, 3, 8, 8))


def test_unet_too_small_input_error_stays_clear_in_eager_mode():
    model = UNet().eval()
    with pytest.raises(ValueError, match=r"^UNet needs H and W of at least 16, got 15x40$"):
        model(torch.randn(1, 3, 15, 40))
    with pytest.raises(ValueError, match=r"^UNet expects \(N, 3, H, W\), got \(3, 32, 32\)$"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize("kwargs", [{"n_channels": 0}, {"n_classes": 0}, {"n_classes": -1}])
def test_unet_refuses_no_channels_or_no_classes_when_built(kwargs):
    with pytest.raises(ValueError, match="n_channels and n_classes must be at least 1"):
        UNet(**kwargs)


def test_up_without_alignment_computes_the_padding_and_throws_it_away():
    """The tutorial's `X1 = F.pad(x1, ...)`: padded under a new name, the unpadded map used."""
    up, wrong = Up(128, 64, bilinear=False).eval(), UpWithoutAlignment(128, 64, bilinear=False).eval()
    wrong.load_state_dict(up.state_dict())
    x, skip = torch.randn(1, 128, 4, 4), torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(wrong(x, skip), up(x, skip))  # nothing to pad: the same block
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            wrong(x, torch.randn(1, 64, 9, 9))


def test_unet_without_alignment_breaks_on_odd_sizes_only():
    aligned, broken = UNet(bilinear=True).eval(), UNetWithoutAlignment(bilinear=True).eval()
    broken.load_state_dict(aligned.state_dict())
    assert list(broken.state_dict()) == list(aligned.state_dict())  # the same layers and names
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(broken(x), aligned(x))  # no padding needed: the same network
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            broken(torch.randn(1, 3, 65, 65))
        assert aligned(torch.randn(1, 3, 65, 65)).shape == (1, 2, 65, 65)


def test_every_stage_follows_the_u():
    """torchinfo's per-stage output sizes: floor(65 / 2 ** k) down, then back to 65."""
    from torchinfo import summary

    stats = summary(UNet(bilinear=False).eval(), input_size=(1, 3, 65, 65), depth=1, verbose=0)
    stages = [row for row in stats.summary_list if row.depth == 1]
    assert [row.var_name for row in stages] == ["inc", "down1", "down2", "down3", "down4",
                                                "up1", "up2", "up3", "up4", "outc"]
    assert [row.output_size[-1] for row in stages] == [65, 32, 16, 8, 4, 8, 16, 32, 65, 65]
    assert [row.output_size[1] for row in stages] == [64, 128, 256, 512, 1024,
                                                      512, 256, 128, 64, 2]
    assert stats.total_params == 31_037_698


# --- MobileNet v1 ---------------------------------------------------------------------

def test_depthwise_separable_conv_has_one_filter_per_channel():
    block = DepthwiseSeparableConv(32, 64, stride=2)
    assert block.depthwise[0].groups == 32
    assert block.depthwise[0].weight.shape == (32, 1, 3, 3)
    # depthwise 3x3 + BN, pointwise 1x1 + BN
    assert count_parameters(block) == 32 * 9 + 2 * 32 + 32 * 64 + 2 * 64
    assert block(torch.randn(1, 32, 9, 9)).shape == (1, 64, 5, 5)


def test_basic_conv2d_keeps_or_halves_the_size():
    assert BasicConv2d(3, 8)(torch.randn(1, 3, 7, 7)).shape == (1, 8, 7, 7)
    assert BasicConv2d(3, 8, stride=2)(torch.randn(1, 3, 7, 7)).shape == (1, 8, 4, 4)


# Howard et al. 2017, Table 6 (width multiplier, 224x224) and Table 7 (resolution):
# (width_mult, size, million mult-adds, million parameters)
MOBILENET_PAPER = [(1.0, 224, 569, 4.2), (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3),
                   (0.25, 224, 41, 0.5), (1.0, 192, 418, 4.2)]


@pytest.mark.parametrize("width_mult, size, macs, params", MOBILENET_PAPER)
def test_mobilenet_v1_matches_the_paper(width_mult, size, macs, params):
    model = MobileNetV1(width_mult=width_mult).eval()
    assert round(count_parameters(model) / 1e6, 1) == params
    assert round(count_macs(model, torch.randn(1, 3, size, size)) / 1e6) == macs


def test_mobilenet_v1_exact_parameter_count():
    assert count_parameters(MobileNetV1()) == 4_231_976


def test_config_loop_and_flat_versions_are_the_same_network():
    loop, flat = MobileNetV1().eval(), MobileNetV1Flat().eval()
    assert repr(loop.features) == repr(flat.features)
    assert ({k: v.shape for k, v in loop.state_dict().items()}
            == {k: v.shape for k, v in flat.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    assert_same_network(loop, flat, x)  # every layer's output, not only the (vanishing) last
    with torch.no_grad():
        assert torch.equal(loop.features(x), flat.features(x))


def test_mobilenet_v1_refuses_a_non_positive_width():
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        MobileNetV1(width_mult=0)


@pytest.mark.parametrize("model, last_map, features", [
    (MobileNetV1WithFixedPool, 4, 4096), (MobileNetV1WithFixedPoolAndLastStride1, 7, 9216),
], ids=["hand-written", "loop"])
def test_fixed_pool_mobilenets_fail_at_fc_on_224(model, last_map, features):
    model = model().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.features(x).shape == (1, 1024, last_map, last_map)
        with pytest.raises(RuntimeError, match=rf"\(1x{features} and 1024x1000\)"):
            model(x)


@pytest.mark.parametrize("model, fits", [
    (MobileNetV1WithFixedPool, range(65, 193)), (MobileNetV1WithFixedPoolAndLastStride1, range(33, 97)),
], ids=["hand-written", "loop"])
def test_fixed_pool_mobilenets_fit_only_a_band_of_input_sizes(model, fits):
    model = model().eval()
    with torch.no_grad():
        for size in (fits.start - 1, fits.start, fits.stop - 1, fits.stop):
            x = torch.randn(1, 3, size, size)
            if size in fits:
                assert model(x).shape == (1, 1000), size
            else:
                with pytest.raises(RuntimeError):  # too small for the pool, or too many features
                    model(x)


@pytest.mark.parametrize("model", [MobileNetV1WithFixedPool, MobileNetV1WithFixedPoolAndLastStride1],
                         ids=["hand-written", "loop"])
def test_fixed_pool_mobilenets_run_neither_at_32_nor_with_the_7x7_map_the_post_meant(model):
    """The post: 224 x 224 x 3 in, '7 x 7 x 1024 -> avg_pool2d(x, 2) -> 1 x 1 x 1024'."""
    model = model().eval()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"Calculated output size: \(1024x0x0\)"):
            model(torch.randn(1, 3, 32, 32))
        assert F.avg_pool2d(torch.zeros(1, 1024, 7, 7), 2).shape == (1, 1024, 3, 3)  # not 1x1
    assert model.fc.out_features == 1000


def test_the_loop_refactor_changes_the_last_stride_and_only_the_structure_check_sees_it():
    hand, loop = MobileNetV1WithFixedPool().eval(), MobileNetV1WithFixedPoolAndLastStride1().eval()
    assert hand.features[13].depthwise[0].stride == (2, 2)
    assert loop.features[13].depthwise[0].stride == (1, 1)
    loop.load_state_dict(hand.state_dict(), strict=True)  # loading does not see strides
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert hand(x).shape == loop(x).shape == (2, 1000)
    with pytest.raises(AssertionError, match=r"different layers:\n  \('features\.13\.depthwise\.0'"
                                             r".*stride=\(2, 2\).*\n.*stride=\(1, 1\)"):
        assert_same_network(hand, loop, x)


def test_assert_same_network_passes_for_the_same_network_and_catches_a_different_forward():
    x = torch.randn(1, 3, 64, 64)
    assert_same_network(MobileNetV1(), MobileNetV1Flat(), x)
    assert_same_network(MobileNetV1Flat(), MobileNetV1(), x)

    class MaxPooled(MobileNetV1Flat):  # same layers, a different forward
        def forward(self, x):
            return self.classifier(torch.flatten(torch.amax(self.features(x), dim=(2, 3)), 1))

    with pytest.raises(AssertionError, match=r"same layers and weights, different outputs: avgpool and classifier"):
        assert_same_network(MobileNetV1Flat(), MaxPooled(), x)
    deeper = MobileNetV1Flat()
    deeper.features.add_module("block14", DepthwiseSeparableConv(1024, 1024, 1))
    with pytest.raises(AssertionError, match=r"different layers:\n  \('avgpool'.*\n  \('features\.block14'"):
        assert_same_network(MobileNetV1Flat(), deeper, x)


def test_assert_same_network_compares_every_layer_not_only_the_output():
    """A fresh MobileNet's activations vanish in eval mode: its output is about the fc bias."""
    model = MobileNetV1().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert (out[0] - model.classifier.bias).abs().max() < 1e-8

    class FeaturesDoubled(MobileNetV1Flat):  # the same calls; twice the features
        def forward(self, x):
            x = self.features(x) * 2
            return self.classifier(torch.flatten(self.avgpool(x), 1))

    flat, doubled = MobileNetV1Flat().eval(), FeaturesDoubled().eval()
    doubled.load_state_dict(flat.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(flat(x), doubled(x), rtol=0, atol=1e-8)  # the outputs cannot tell
    with pytest.raises(AssertionError, match="different outputs: avgpool and avgpool"):
        assert_same_network(flat, doubled, x)


def test_the_fixed_mobilenet_v1_runs_at_any_size():
    fixed = MobileNetV1(num_classes=10).eval()
    with torch.no_grad():
        for size in (96, 224, 320):
            assert fixed(torch.randn(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize("model", [MobileNetV1, MobileNetV1Flat, MobileNetV2])
def test_mobilenets_refuse_no_classes_when_built(model):
    for num_classes in (0, -3):
        with pytest.raises(ValueError, match=f"num_classes must be at least 1, got {num_classes}"):
            model(num_classes=num_classes)


@pytest.mark.parametrize("model", [MobileNetV1, MobileNetV1Flat, MobileNetV2])
def test_mobilenet_training_batch_of_one_small_image_gets_a_clear_error(model):
    model = model(num_classes=10).train()
    with pytest.raises(ValueError, match="batch of 1 needs H or W of at least 33, got 32x20"):
        model(torch.randn(1, 3, 32, 20))
    assert model(torch.randn(1, 3, 33, 20)).shape == (1, 10)  # a 2x1 map: two values per channel
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --- MobileNet v2 ---------------------------------------------------------------------

def test_mobilenet_v2_state_dict_matches_torchvision_both_ways():
    ours, theirs = MobileNetV2().eval(), torchvision.models.mobilenet_v2(weights=None).eval()
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in theirs.state_dict().items()})
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():  # the features too: a fresh model's output is about its bias
        assert torch.equal(ours.features(x), theirs.features(x)) and torch.equal(ours(x), theirs(x))
    ours = MobileNetV2().eval()
    other = torchvision.models.mobilenet_v2(weights=None).eval()
    ours.load_state_dict(other.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours.features(x), other.features(x))


def test_mobilenet_v2_parameters_and_macs_match_the_references():
    ours = MobileNetV2().eval()
    meta = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta
    assert count_parameters(ours) == meta["num_params"] == 3_504_872
    x = torch.randn(1, 3, 224, 224)
    theirs = torchvision.models.mobilenet_v2(weights=None).eval()
    macs = count_macs(ours, x)
    assert macs == count_macs(theirs, x)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ours(x)
    assert counter.get_total_flops() == 2 * macs  # FLOPs: a multiply and an add per mult-add
    assert round(macs / 1e9, 3) == meta["_ops"]       # torchvision: 0.301 G
    assert abs(macs / 300e6 - 1) < 0.01               # Sandler et al. 2018: 300 M


def test_inverted_residual_adds_the_input_only_where_shapes_match():
    ours = MobileNetV2()
    theirs = torchvision.models.mobilenet_v2(weights=None)
    flags = [block.use_res_connect for block in ours.features[1:-1]]
    assert flags == [block.use_res_connect for block in theirs.features[1:-1]]
    assert sum(flags) == 10
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        InvertedResidual(16, 16, stride=3, expand_ratio=6)


# --- devices --------------------------------------------------------------------------

def test_unet_runs_on_device(device):
    model = UNet(bilinear=True).eval().to(device)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 17, device=device))
    assert out.shape == (1, 2, 33, 17) and out.device.type == device.type


def test_mobilenets_run_on_device_and_match_torchvision(device):
    ours = MobileNetV2().eval().to(device)
    theirs = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():  # relative: the features of a fresh model are tiny
        assert torch.allclose(ours.features(x), theirs.features(x), rtol=1e-3, atol=0)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert MobileNetV1().eval().to(device)(x).device.type == device.type
