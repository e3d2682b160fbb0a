"""The shared backbone and heads: one class for 1D, 2D and 3D, odd sizes, gradients, dropout."""

import pytest
import torch
from torch import nn

from biocnn.backbone import ConvBackbone, enable_mc_dropout, spatial_dropout
from biocnn.heads import BindingHead, ClassificationHead, UNetDecoder
from biocnn.models import Classifier, UNet, build_model

# (spatial_dims, input shape with odd sizes)
CASES = [(1, (2, 4, 101)), (2, (2, 3, 37, 45)), (3, (2, 2, 17, 19, 21))]


@pytest.mark.parametrize("spatial_dims,shape", CASES)
def test_same_class_serves_every_dimensionality(spatial_dims, shape):
    backbone = ConvBackbone(spatial_dims, shape[1], channels=(8, 16, 32), strides=(1, 2, 2))
    features = backbone(torch.randn(*shape))
    assert [f.shape[1] for f in features] == [8, 16, 32]
    # "same" padding: stride 2 maps n -> ceil(n / 2), also for odd n
    sizes = list(shape[2:])
    for f, stride in zip(features, (1, 2, 2)):
        sizes = [-(-n // stride) for n in sizes]
        assert list(f.shape[2:]) == sizes
    assert all(f.shape[0] == shape[0] for f in features)


def test_valid_padding_gives_deepbind_positions():
    backbone = ConvBackbone(
        1, 4, channels=(16,), strides=(1,), kernel_size=24, convs_per_stage=1, norm=None, act="relu", padding="valid"
    )
    (out,) = backbone(torch.randn(3, 4, 101 + 2 * 23))
    assert out.shape == (3, 16, 101 + 23)
    assert (out >= 0).all()  # rectified


def test_wrong_input_rank_is_a_clear_error():
    backbone = ConvBackbone(2, 1, channels=(4,))
    with pytest.raises(ValueError, match="2D input"):
        backbone(torch.randn(1, 1, 10, 10, 10))
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvBackbone(4, 1)
    with pytest.raises(ValueError, match="one entry per stage"):
        ConvBackbone(2, 1, channels=(4, 8), strides=(1,))


@pytest.mark.parametrize("spatial_dims,shape", CASES[1:])
def test_unet_output_matches_odd_input_size(spatial_dims, shape):
    model = UNet(spatial_dims, shape[1], out_channels=3, channels=(4, 8, 16), dropout=0.1, decoder_dropout=0.1)
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], 3, *shape[2:])


def _assert_all_parameters_get_gradients(model: nn.Module, out: torch.Tensor) -> None:
    out.float().pow(2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("spatial_dims,shape", CASES)
def test_gradients_reach_every_parameter(spatial_dims, shape):
    torch.manual_seed(0)
    unet = UNet(spatial_dims, shape[1], 2, channels=(4, 8, 8))
    _assert_all_parameters_get_gradients(unet, unet(torch.randn(*shape)))
    clf = Classifier(spatial_dims, shape[1], channels=(4, 8), hidden=(8,), pool="avgmax")
    _assert_all_parameters_get_gradients(clf, clf(torch.randn(*shape)))


def test_binding_head_gradients_and_pooling():
    torch.manual_seed(0)
    backbone = ConvBackbone(
        1, 4, channels=(6,), strides=(1,), kernel_size=5, convs_per_stage=1, norm=None, padding="valid"
    )
    head = BindingHead(6, pool="maxavg", hidden=32, dropout=0.0)
    model = nn.Sequential()
    model.backbone, model.head = backbone, head
    x = torch.randn(4, 4, 30)
    score = head(backbone(x))
    assert score.shape == (4,)
    _assert_all_parameters_get_gradients(model, score)
    pooled = head.pooled(torch.tensor([[[0.0, 2.0, 1.0]]]))
    assert pooled.tolist() == [[1.0, 2.0]]  # average, then max


def test_classification_head_pools_and_decoder_needs_matching_rates():
    head = ClassificationHead(8, num_outputs=3, hidden=())
    assert head([torch.randn(2, 8, 5, 5)]).shape == (2, 3)
    with pytest.raises(ValueError, match="rates"):
        UNetDecoder(2, (4, 8, 16), (1, 2, 2), 2, dropout=(0.1,))


@pytest.mark.parametrize("dims,cls", [(1, nn.Dropout1d), (2, nn.Dropout2d), (3, nn.Dropout3d)])
def test_spatial_dropout_drops_whole_channels(dims, cls):
    layer = spatial_dropout(dims, 0.5)
    assert isinstance(layer, cls)
    torch.manual_seed(0)
    x = torch.ones(4, 32, *([6] * dims))
    y = layer.train()(x)
    per_channel = y.flatten(2)
    # every channel is either all zero or all scaled by 1 / (1 - p)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2).all(-1))
    assert (per_channel == 0).any() and (per_channel == 2).any()
    assert isinstance(spatial_dropout(dims, 0.0), nn.Identity)


def test_mc_dropout_samples_differ_but_batchnorm_stays_frozen():
    torch.manual_seed(0)
    model = UNet(2, 1, 2, channels=(4, 8), dropout=(0.0, 0.5), decoder_dropout=0.5).eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert enable_mc_dropout(model) == 2
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)
    assert not bn.training and torch.equal(bn.running_mean, before)


def test_build_model_from_spec():
    model = build_model({"name": "unet", "spatial_dims": 3, "in_channels": 2, "out_channels": 4, "channels": [4, 8]})
    assert isinstance(model, UNet) and model.backbone.spatial_dims == 3
