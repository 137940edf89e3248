import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tgfr.models import IResNet, IResNetConfig, iresnet18, iresnet34, iresnet50, iresnet100, load_weights_file
from tgfr.models import regions_as_tokens

# Block counts of insightface's arcface_torch iresnet18/34/50/100, written here independently.
INSIGHTFACE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def insightface_shapes(blocks) -> dict[str, tuple[int, ...]]:
    """Key -> shape of insightface's iResNet state_dict at 112x112 from its architecture rule:
    every stage starts with a stride-2 block that has a conv1x1 + BN downsample."""
    shapes = {}

    def batchnorm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 3, 3)
    batchnorm("bn1", 64)
    shapes["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for index in range(count):
            prefix = f"layer{stage}.{index}"
            block_in = inplanes if index == 0 else planes
            batchnorm(f"{prefix}.bn1", block_in)
            shapes[f"{prefix}.conv1.weight"] = (planes, block_in, 3, 3)
            batchnorm(f"{prefix}.bn2", planes)
            shapes[f"{prefix}.prelu.weight"] = (planes,)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            batchnorm(f"{prefix}.bn3", planes)
            if index == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (planes, block_in, 1, 1)
                batchnorm(f"{prefix}.downsample.1", planes)
        inplanes = planes
    batchnorm("bn2", 512)
    shapes["fc.weight"] = (512, 512 * 7 * 7)
    shapes["fc.bias"] = (512,)
    batchnorm("features", 512)
    return shapes


@pytest.mark.parametrize("depth, build", [(18, iresnet18), (34, iresnet34), (100, iresnet100)])
def test_state_dict_layout_matches_insightface(depth, build):
    state = build().state_dict()
    expected = insightface_shapes(INSIGHTFACE_BLOCKS[depth])
    assert list(state) == list(expected)  # same keys in the same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_insightface_iresnet50_weights_load_strictly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    released = {
        key: torch.tensor(7, dtype=torch.int64) if not shape else torch.randn(shape, generator=generator)
        for key, shape in insightface_shapes(INSIGHTFACE_BLOCKS[50]).items()
    }
    path = tmp_path / "backbone.pth"
    torch.save(released, path)

    model = iresnet50()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in released.items())
    # the project's loader reads the same file without unpickling arbitrary objects
    assert load_weights_file(path).keys() == released.keys()

    model.eval()
    with torch.no_grad():
        embedding, regions = model(torch.randn(1, 3, 112, 112, generator=generator))
    assert embedding.shape == (1, 512)
    assert regions.shape == (1, 256, 14, 14)


def test_regions_are_the_layer3_map_and_tokens_are_row_major():
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=64)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, regions = model(images)
        stem = model.prelu(model.bn1(model.conv1(images)))
        expected = model.layer3(model.layer2(model.layer1(stem)))
    torch.testing.assert_close(regions, expected)
    tokens = regions_as_tokens(regions)
    assert tokens.shape == (2, 8 * 8, 64)
    torch.testing.assert_close(tokens[1, 3 * 8 + 5], regions[1, :, 3, 5])


@pytest.mark.parametrize("input_size, grid, final", [(56, 7, 4), (64, 8, 4), (112, 14, 7)])
def test_reduced_variant_follows_the_input_size(input_size, grid, final):
    config = IResNetConfig.preset("iresnet_small", input_size=input_size, num_features=128)
    model = IResNet(config).eval()
    assert model.fc.in_features == 8 * config.width * final * final
    with torch.no_grad():
        embedding, regions = model(torch.randn(3, 3, input_size, input_size))
    assert embedding.shape == (3, 128)
    assert regions.shape == (3, 4 * config.width, grid, grid)
    assert config.num_regions == grid * grid


def test_dual_dropout_views_share_one_trunk_pass():
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32, dropout=0.5))
    trunk_calls = []
    model.layer1.register_forward_hook(lambda *_: trunk_calls.append(1))
    images = torch.randn(4, 3, 32, 32)

    view1, view2, regions = model.forward_two_views(images)
    assert len(trunk_calls) == 1
    assert view1.shape == view2.shape == (4, 512)
    assert not torch.allclose(view1, view2)
    (view1.sum() + 2 * view2.sum()).backward()
    assert model.fc.weight.grad.abs().sum() > 0 and model.conv1.weight.grad.abs().sum() > 0
    # The second view alone reaches the trunk too (CoReFace's regularization trains it through both views).
    model.zero_grad()
    _, view2, _ = model.forward_two_views(images)
    view2.square().sum().backward()
    assert model.conv1.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        view1, view2, _ = model.forward_two_views(images)
        plain = model(images).embedding
    torch.testing.assert_close(view1, view2, rtol=0, atol=0)
    torch.testing.assert_close(view1, plain, rtol=0, atol=0)


def test_dropout_masks_the_flattened_map_before_fc():
    # A view's fc input, and the plain forward's in training (the align stage's), is mask * flat / (1 - p):
    # each entry is 0 or the undropped entry / (1 - p).
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32, dropout=0.25)).eval()
    inputs = []
    model.fc.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.dropout.train()
        model.forward_two_views(images)
        model(images)
        model.dropout.eval()
        model(images)
    flat = inputs[3]
    for dropped in inputs[:3]:
        kept = dropped != 0
        torch.testing.assert_close(dropped[kept], flat[kept] / 0.75)
        assert 0.6 < kept.float().mean() < 0.9
    assert not torch.equal(inputs[0] != 0, inputs[1] != 0)


def test_frozen_backbone_stays_in_eval_and_builds_no_graph():
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32), frozen=True)
    assert not any(p.requires_grad for p in model.parameters())
    # In eval mode from the start (a module is built in training mode): a forward before any train()/eval()
    # call must not run BatchNorm on the batch's statistics and overwrite the running ones.
    assert not model.training and not model.bn1.training
    running_mean = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, running_mean)
    # Its forward builds no graph, so a parameter turned on would silently never train.
    with pytest.raises(ValueError,
                       match=r"^this IResNet is frozen for good .* requires_grad_\(True\) would train nothing"):
        model.requires_grad_(True)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.requires_grad_(False) is model
    running_mean = model.bn1.running_mean.clone()
    model.train()
    assert not model.training and not model.layer2[0].bn1.training
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    embedding, regions = model(images)
    assert not embedding.requires_grad and not regions.requires_grad
    assert not any(view.requires_grad for view in model.forward_two_views(images))  # CoReFace's path too
    assert torch.equal(model.bn1.running_mean, running_mean)
    # A wrapper's requires_grad_(True) sets the parameters directly, past IResNet.requires_grad_: the next
    # forward turns them off again and still builds no graph.
    torch.nn.Sequential(model).requires_grad_(True)
    assert not any(tensor.requires_grad for tensor in (*model(images), *model.forward_two_views(images)))
    assert not any(p.requires_grad for p in model.parameters())


def test_embedding_bn_scale_is_fixed_like_insightface():
    """The scale stays 1 through a training step, also after a wrapper's requires_grad_(True) (nn.Module's sets
    every parameter directly) and with an optimizer over every parameter the wrapper lists."""
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32))
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(model.config.num_features))
    for call_at in (model, torch.nn.Sequential(model)):
        call_at.requires_grad_(False).requires_grad_(True)
        optimizer = torch.optim.SGD(call_at.parameters(), lr=1.0)
        model(torch.randn(4, 3, 32, 32)).embedding.pow(3).sum().backward()
        optimizer.step()
        assert torch.equal(model.features.weight, torch.ones(model.config.num_features))
        assert not model.features.weight.requires_grad
    assert "features.weight" in model.state_dict()  # where insightface's weights hold it


def test_the_fixed_scale_survives_a_conversion_to_sync_batchnorm():
    """SyncBatchNorm.convert_sync_batchnorm, the usual remedy for per-rank BatchNorm statistics, takes the
    embedding BatchNorm as it takes the others, its scale still 1 and fixed through a training step."""
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(model))
    assert isinstance(model.features, torch.nn.SyncBatchNorm) and not model.features.weight.requires_grad
    converted.requires_grad_(True)
    optimizer = torch.optim.SGD(converted.parameters(), lr=1.0)
    model.eval()  # SyncBatchNorm normalizes with batch statistics only inside a process group
    model(torch.randn(4, 3, 32, 32)).embedding.pow(3).sum().backward()
    optimizer.step()
    assert torch.equal(model.features.weight, torch.ones(model.config.num_features))


def test_every_batchnorm_has_insightfaces_eps():
    """insightface's iresnet.py builds every BatchNorm with eps=1e-05: the released weights' statistics were
    gathered with it, and another eps shifts every normalized value."""
    batchnorms = {name: module.eps for name, module in iresnet18().named_modules()
                  if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))}
    expected = {key.removesuffix(".running_var") for key in insightface_shapes(INSIGHTFACE_BLOCKS[18])
                if key.endswith(".running_var")}
    assert batchnorms == dict.fromkeys(expected, 1e-05)


def test_fresh_conv_weights_are_drawn_like_insightfaces():
    """insightface initializes every convolution with normal(0, 0.1); PyTorch's default (kaiming uniform)
    gives a std of 1 / sqrt(3 * fan_in): 0.11 for the stem's conv1, but 0.072 or less for every other conv."""
    torch.manual_seed(0)
    convs = {name: module.weight.detach() for name, module in iresnet18().named_modules()
             if isinstance(module, torch.nn.Conv2d)}
    assert len(convs) == 1 + 2 * sum(INSIGHTFACE_BLOCKS[18]) + 4  # stem, two per block, one downsample per stage
    for name, weight in convs.items():
        # The sample mean and std of n normal(0, 0.1) draws lie within 5 standard errors (0.1 / sqrt(n) and
        # 0.1 / sqrt(2n)) of 0 and 0.1 but for a chance of about 1e-6.
        count = weight.numel()
        assert abs(weight.mean().item()) < 5 * 0.1 / count**0.5, name
        assert abs(weight.std().item() - 0.1) < 5 * 0.1 / (2 * count)**0.5, name


def test_bad_configs_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="input_size"):
        IResNetConfig(input_size=8)
    with pytest.raises(ValueError, match="name"):
        IResNetConfig.preset("iresnet42")
    with pytest.raises(ValueError, match="dropout"):
        IResNetConfig(dropout=1.0)
    for field in ("width", "num_features"):  # failed later in the build or the first forward, naming neither
        with pytest.raises(ValueError, match=f"^{field} must be an integer >= 1, got 0$"):
            IResNetConfig(**{field: 0})
    # Given in Python (config.json's types are checked by TGFRConfig.from_dict): a float size failed in PyTorch's
    # layer build, a string dropout comparing it, and a bool block count was taken as 1.
    for field, value in (("width", 16.0), ("input_size", 32.0), ("num_features", True), ("width", "16")):
        with pytest.raises(TypeError, match="^" + re.escape(f"{field} must be an integer, got "
                                                            f"{type(value).__name__} {value!r}") + "$"):
            IResNetConfig(**{field: value})
    with pytest.raises(TypeError, match=re.escape("layers[0] must be an integer, got bool True")):
        IResNetConfig(layers=(True, 1, 1, 1))
    with pytest.raises(ValueError, match="^layers must be 4 positive block counts, got 2$"):
        IResNetConfig(layers=2)
    for value in ("0.1", True):
        with pytest.raises(TypeError, match="^" + re.escape(f"dropout must be a number, got {type(value).__name__} "
                                                            f"{value!r}") + "$"):
            IResNetConfig(dropout=value)
    # numpy scalars, as tgfr takes them elsewhere, build the model the Python numbers do.
    config = IResNetConfig.preset("iresnet_small", input_size=np.int64(32), width=np.int32(8), dropout=np.float64(0.25))
    assert config == IResNetConfig.preset("iresnet_small", input_size=32, width=8, dropout=0.25)
    assert type(config.input_size) is int and type(config.width) is int  # config.json takes these
    assert IResNet(config).fc.in_features == 8 * 8 * 2 * 2  # 8 * width channels of the 2x2 layer4 map at 32x32
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 32, 32\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(TypeError, match="images"):
        model([1, 2, 3])


def test_the_backbone_runs_on_the_meta_device():
    """Shape inference without memory: the dtype check asked whether autocast is on, which raised for meta."""
    with torch.device("meta"):
        model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32)).eval()
        embedding, regions = model(torch.empty(2, 3, 32, 32))
    assert embedding.is_meta and embedding.shape == (2, model.config.num_features) and regions.shape[0] == 2
    with pytest.raises(TypeError, match="images must have dtype float32"):
        model(torch.empty(2, 3, 32, 32, device="meta", dtype=torch.uint8))


def test_images_of_another_dtype_than_the_parameters_are_named():
    """uint8 pixels and float16 images into a float32 backbone failed inside conv1, naming neither."""
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32)).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for dtype in (torch.uint8, torch.float16, torch.float64):
        with pytest.raises(TypeError, match=re.escape(f"images must have dtype float32, the IResNet's parameters, "
                                                      f"got {str(dtype).removeprefix('torch.')} (images are floats "
                                                      "in [-1, 1]")):
            model(images.to(dtype))
    with pytest.raises(TypeError, match="images must have dtype bfloat16, the IResNet's parameters, got float32"):
        copy.deepcopy(model).to(torch.bfloat16)(images)
    # Under autocast the float32 images meet float32 parameters and conv1 casts both to bfloat16.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        embedding, regions = model(images)
        for dtype in (torch.uint8, torch.float64):  # autocast leaves float64 as it is: conv1 would fail on it
            with pytest.raises(TypeError, match="images must have dtype float32, the IResNet's parameters, got "
                                                + str(dtype).removeprefix("torch.")):
                model(images.to(dtype))
    assert embedding.dtype == regions.dtype == torch.bfloat16
    with torch.no_grad():
        assert F.cosine_similarity(embedding.float(), model(images).embedding).min() > 0.99  # bf16 rounds at 2**-8
        # A bfloat16 backbone takes float32 images under autocast too: conv1, which they meet first, casts them.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert copy.deepcopy(model).to(torch.bfloat16)(images).embedding.dtype == torch.bfloat16


def batch_norm(x, module):
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, training=False,
                        eps=module.eps)


def insightface_forward(model, images):
    """insightface's iresnet forward in eval mode, written out with torch.nn.functional: (embedding, layer3 map)."""
    def block(x, b):
        out = batch_norm(x, b.bn1)
        out = F.conv2d(out, b.conv1.weight, padding=1)
        out = F.prelu(batch_norm(out, b.bn2), b.prelu.weight)
        out = batch_norm(F.conv2d(out, b.conv2.weight, stride=b.conv2.stride, padding=1), b.bn3)
        if b.downsample is not None:
            x = batch_norm(F.conv2d(x, b.downsample[0].weight, stride=b.downsample[0].stride), b.downsample[1])
        return out + x

    x = F.prelu(batch_norm(F.conv2d(images, model.conv1.weight, padding=1), model.bn1), model.prelu.weight)
    maps = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for b in layer:
            x = block(x, b)
        maps.append(x)
    x = batch_norm(x, model.bn2).reshape(len(images), -1)  # (C, H, W) order, as released fc weights expect
    return batch_norm(F.linear(x, model.fc.weight, model.fc.bias), model.features), maps[2]


def test_forward_matches_insightfaces_written_out():
    """Random weights, BN statistics and PReLU slopes, so that every BN, PReLU and the flatten order count (the
    layout tests pass with any of them dropped)."""
    torch.manual_seed(0)
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=32)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
        model.features.weight.fill_(1.0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        output = model(images)
        embedding, regions = insightface_forward(model, images)
    torch.testing.assert_close(output.regions, regions, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.embedding, embedding, rtol=1e-4, atol=1e-4)
