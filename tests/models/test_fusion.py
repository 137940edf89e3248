import math
import re

import pytest
import torch
import torch.nn.functional as F

from tgfr.models import FCFM, ConcatFusion, FineGrainedInteraction, LinearFusion, build_fusion


def aligned_batch(batch=3, regions=6, words=5, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    return dict(regions=unit(batch, regions, dim), words=unit(batch, words, dim),
                lengths=torch.tensor([5, 1, 3])[:batch], image_global=unit(batch, dim), sentence=unit(batch, dim))


def fine_reference(fine, regions, words, lengths):
    """Per sample, only the caption's valid words: softmax(q k^T / sqrt(D)) v, residual, LayerNorm,
    mean over regions, projection."""
    out = []
    for b in range(regions.shape[0]):
        valid = words[b, : int(lengths[b])]
        q = regions[b] @ fine.query.weight.T + fine.query.bias
        k = valid @ fine.key.weight.T + fine.key.bias
        v = valid @ fine.value.weight.T + fine.value.bias
        context = torch.softmax(q @ k.T / math.sqrt(regions.shape[2]), dim=1) @ v
        hidden = F.layer_norm(regions[b] + context, (regions.shape[2],), fine.norm.weight, fine.norm.bias)
        out.append(hidden.mean(0) @ fine.project.weight.T + fine.project.bias)
    return torch.stack(out)


def test_fcfm_concatenates_fine_and_coarse_parts():
    torch.manual_seed(0)
    fusion = FCFM(dim=8, fine_dim=4)
    with torch.no_grad():
        fusion.norm_image.weight.uniform_(0.5, 1.5)
        fusion.norm_sentence.bias.uniform_(-0.5, 0.5)
    inputs = aligned_batch()
    fused = fusion(**inputs)
    assert fused.shape == (3, 4 + 8 + 8) and fusion.out_dim == 20
    torch.testing.assert_close(fused[:, :4], fine_reference(fusion.fine, inputs["regions"], inputs["words"],
                                                            inputs["lengths"]))
    norm_image, norm_sentence = fusion.norm_image, fusion.norm_sentence
    torch.testing.assert_close(fused[:, 4:12], F.layer_norm(inputs["image_global"], (8,), norm_image.weight,
                                                            norm_image.bias))
    torch.testing.assert_close(fused[:, 12:], F.layer_norm(inputs["sentence"], (8,), norm_sentence.weight,
                                                           norm_sentence.bias))


def test_fcfm_ignores_padded_words_and_passes_gradients():
    fusion = FCFM(dim=8, fine_dim=4)
    inputs = aligned_batch()
    noisy = dict(inputs, words=inputs["words"].clone())
    noisy["words"][1, 1:] = 50.0
    torch.testing.assert_close(fusion(**noisy), fusion(**inputs))

    inputs = {k: v.requires_grad_() if v.is_floating_point() else v for k, v in inputs.items()}
    fusion(**inputs).square().sum().backward()
    for name in ("regions", "words", "image_global", "sentence"):
        assert inputs[name].grad.abs().sum() > 0, name
    assert torch.all(inputs["words"].grad[1, 1:] == 0)


def test_tgfr_fused_size_is_640():
    fusion = build_fusion("fcfm")
    inputs = aligned_batch(batch=2, regions=196, words=22, dim=256)
    assert fusion(**inputs).shape == (2, 640)


def test_baselines():
    inputs = aligned_batch()
    concat = ConcatFusion(dim=8)
    torch.testing.assert_close(concat(**inputs), torch.cat((inputs["image_global"], inputs["sentence"]), dim=1))
    linear = LinearFusion(dim=8, out_dim=5)
    expected = torch.cat((inputs["image_global"], inputs["sentence"]), dim=1) @ linear.linear.weight.T
    torch.testing.assert_close(linear(**inputs), expected + linear.linear.bias)
    assert build_fusion("linear", dim=8, out_dim=5).out_dim == 5
    assert build_fusion("concat", dim=8).out_dim == 16


def test_fusion_rejects_bad_inputs():
    fusion = FCFM(dim=8, fine_dim=4)
    inputs = aligned_batch()
    with pytest.raises(ValueError, match="sentence must have size 8"):
        fusion(**dict(inputs, sentence=torch.randn(3, 9)))
    with pytest.raises(ValueError, match="words must have size 3"):
        fusion(**dict(inputs, words=inputs["words"][:2]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        fusion(**dict(inputs, lengths=torch.tensor([6, 1, 1])))
    # No region gave NaN embeddings (a mean over no region), an empty batch an empty result.
    with pytest.raises(ValueError, match=re.escape("regions must not be empty along dimension 1, got shape (3, 0, 8)")):
        fusion(**dict(inputs, regions=inputs["regions"][:, :0]))
    empty = {name: value[:0] for name, value in inputs.items()}
    with pytest.raises(ValueError, match=re.escape("regions must not be empty along dimension 0, got shape (0, 6, 8)")):
        fusion(**empty)
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_fusion("attention")
    # The exported fine-grained part alone: a length of 0 gave a NaN row (a softmax over no word), one past T was
    # read as T.
    fine = FineGrainedInteraction(dim=8, out_dim=4)
    local = {name: inputs[name] for name in ("regions", "words", "lengths")}
    torch.testing.assert_close(fine(**local), fine_reference(fine, **local))
    for lengths, given in (([0, 1, 3], "[0, 3]"), ([5, 6, 1], "[1, 6]")):
        with pytest.raises(ValueError, match="^" + re.escape(f"lengths must lie in [1, T=5] (T from words.shape[1]), "
                                                             f"got values in {given}") + "$"):
            fine(**dict(local, lengths=torch.tensor(lengths)))
    with pytest.raises(ValueError, match=re.escape("words must have size 8 (the alignment dimension D) in dimension 2, "
                                                   "got 9 (shape (3, 5, 9))")):
        fine(**dict(local, words=torch.randn(3, 5, 9)))
    with pytest.raises(ValueError, match=re.escape("lengths must have size 3 (the number of captions N)")):
        fine(**dict(local, lengths=local["lengths"][:2]))
    with pytest.raises(ValueError, match=re.escape("regions must not be empty along dimension 1, got shape (3, 0, 8)")):
        fine(**dict(local, regions=local["regions"][:, :0]))
    with pytest.raises(TypeError, match="^" + re.escape("regions must have dtype float32, the "
                                                        "FineGrainedInteraction's parameters, got float64") + "$"):
        fine(**dict(local, regions=local["regions"].double()))


@pytest.mark.parametrize("name", ["fcfm", "linear"])
@pytest.mark.parametrize("argument", ["regions", "words", "image_global", "sentence"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_fusion_refuses_an_input_of_another_dtype_than_its_parameters_naming_it(name, argument, dtype):
    """A PyTorch error ("mat1 and mat2 must have the same dtype") named neither the argument nor the dtypes."""
    fusion = build_fusion(name, dim=8, fine_dim=4, out_dim=5)
    inputs = aligned_batch()
    inputs[argument] = inputs[argument].to(dtype)
    with pytest.raises(TypeError, match="^" + re.escape(f"{argument} must have dtype float32, the "
                                                        f"{type(fusion).__name__}'s parameters, got "
                                                        f"{str(dtype).removeprefix('torch.')}") + "$"):
        fusion(**inputs)


def test_concat_fusion_has_no_parameters_and_takes_any_float_dtype():
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in aligned_batch().items()}
    torch.testing.assert_close(ConcatFusion(dim=8)(**inputs), torch.cat((inputs["image_global"], inputs["sentence"]),
                                                                          dim=1))


@pytest.mark.parametrize("name", ["fcfm", "linear", "concat"])
@pytest.mark.parametrize("argument", ["regions", "words", "image_global", "sentence"])
@pytest.mark.parametrize("autocast_dtype, dtype", [(torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16)],
                         ids=str)
def test_fusion_under_autocast_refuses_the_other_16_bit_dtype_naming_the_argument(name, argument, autocast_dtype,
                                                                                   dtype):
    """torch.cat under autocast cannot mix float16 with bfloat16, and said so in PyTorch's words
    ("Unexpected floating ScalarType in at::autocast::prioritize"); float32 and autocast's dtype still pass."""
    fusion = build_fusion(name, dim=8, fine_dim=4, out_dim=5)
    inputs = aligned_batch()
    with torch.autocast("cpu", dtype=autocast_dtype):
        for allowed in (torch.float32, autocast_dtype):
            assert fusion(**dict(inputs, **{argument: inputs[argument].to(allowed)})).isfinite().all()
        inputs[argument] = inputs[argument].to(dtype)
        wanted, given = (str(d).removeprefix("torch.") for d in (autocast_dtype, dtype))
        with pytest.raises(TypeError, match="^" + re.escape(f"{argument} has dtype {given}, which torch.autocast with "
                                                            f"dtype {wanted} cannot concatenate with its own; pass "
                                                            f"float32 or {wanted} features") + "$"):
            fusion(**inputs)


def test_fcfm_under_autocast_takes_16_bit_inputs_into_float32_parameters():
    """Autocast casts inputs and weights itself, so the dtype check lets them through; the result is the
    float32 fusion's on the same (rounded) inputs."""
    torch.manual_seed(0)
    fusion = FCFM(dim=8, fine_dim=4)
    inputs = {k: v.half() if v.is_floating_point() else v for k, v in aligned_batch().items()}
    expected = fusion(**{k: v.float() if v.is_floating_point() else v for k, v in inputs.items()})
    with torch.autocast("cpu", dtype=torch.float16):
        fused = fusion(**inputs)
        # autocast leaves float64 as it is, to meet float16 weights: refused as without autocast
        with pytest.raises(TypeError, match="^sentence must have dtype float32, .* got float64$"):
            fusion(**dict(inputs, sentence=inputs["sentence"].double()))
    # float16 rounds by 2**-11 relative (about 5e-4) per operation, on outputs of about 2 at most (LayerNorm's):
    # a few roundings stay far below 5e-3
    torch.testing.assert_close(fused.float(), expected, rtol=0.0, atol=5e-3)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_fcfm_outputs_and_gradients_do_not_see_what_padded_words_hold(fill):
    """Padded words' values entered attention @ values with weight 0, and their keys the queries' gradient:
    0 * NaN = NaN in the fused embedding. Whatever they hold, outputs and gradients (inputs' and weights') are
    those of zero padding, and padded words get a zero gradient."""
    torch.manual_seed(0)
    fusion = FCFM(dim=8, fine_dim=4)
    inputs = aligned_batch()
    padded = torch.arange(5)[None, :] >= inputs["lengths"][:, None]
    inputs["words"][padded] = 0.0
    filled = dict(inputs, words=inputs["words"].masked_fill(padded[..., None], fill))

    def outputs_and_gradients(given):
        given = {k: v.clone().requires_grad_() if v.is_floating_point() else v for k, v in given.items()}
        fusion.zero_grad()
        fused = fusion(**given)
        (fused.square() * torch.linspace(0.5, 2.0, fused.shape[-1])).sum().backward()
        gradients = [given[name].grad for name in ("regions", "words", "image_global", "sentence")]
        return fused, *gradients, *(parameter.grad.clone() for parameter in fusion.parameters())

    results = outputs_and_gradients(filled)
    for actual, expected in zip(results, outputs_and_gradients(inputs), strict=True):
        assert torch.equal(actual, expected)
    assert torch.equal(results[2][padded], torch.zeros(int(padded.sum()), 8))
