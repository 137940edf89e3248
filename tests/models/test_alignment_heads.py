import math
import re

import pytest
import torch
import torch.nn.functional as F

from tgfr.models import ImageAlignmentHead, TextAlignmentHead


def image_head_reference(head, embedding, region_map):
    """The image head written out with functional ops, region by region (eval-mode BN)."""
    bn = head.norm_map
    normalized = (region_map - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    normalized = normalized * bn.weight[:, None, None] + bn.bias[:, None, None]
    batch, channels, height, width = region_map.shape
    outputs = []
    for b in range(batch):
        tokens = torch.stack([normalized[b, :, y, x] for y in range(height) for x in range(width)])  # (R, C)
        attention = head.attention
        q = tokens @ attention.query.weight.T + attention.query.bias
        k = tokens @ attention.key.weight.T + attention.key.bias
        v = tokens @ attention.value.weight.T + attention.value.bias
        attended = torch.softmax(q @ k.T / math.sqrt(channels), dim=1) @ v
        hidden = F.layer_norm(attended, (channels,), head.norm_tokens.weight, head.norm_tokens.bias)
        first, _, second, _ = head.mlp
        hidden = torch.relu(torch.relu(hidden @ first.weight.T + first.bias) @ second.weight.T + second.bias)
        projected = hidden @ head.project_regions.weight.T + head.project_regions.bias
        outputs.append(projected / projected.norm(dim=1, keepdim=True))
    image_global = embedding @ head.project_global.weight.T + head.project_global.bias
    return image_global / image_global.norm(dim=1, keepdim=True), torch.stack(outputs)


def test_image_head_shapes_and_formula():
    torch.manual_seed(0)
    head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8)
    head.norm_map.running_mean.uniform_(-0.5, 0.5)
    head.norm_map.running_var.uniform_(0.5, 2.0)
    head.eval()
    embedding, region_map = torch.randn(3, 24), torch.randn(3, 16, 4, 5)
    image_global, regions = head(embedding, region_map)
    assert image_global.shape == (3, 8) and regions.shape == (3, 20, 8)
    expected_global, expected_regions = image_head_reference(head, embedding, region_map)
    torch.testing.assert_close(image_global, expected_global)
    torch.testing.assert_close(regions, expected_regions)


def test_image_head_tgfr_dimensions_and_unit_norms():
    head = ImageAlignmentHead()
    image_global, regions = head(torch.randn(2, 512), torch.randn(2, 256, 14, 14))
    assert image_global.shape == (2, 256) and regions.shape == (2, 196, 256)
    torch.testing.assert_close(regions.norm(dim=-1), torch.ones(2, 196))
    torch.testing.assert_close(image_global.norm(dim=-1), torch.ones(2))


def text_head_reference(head, tokens, lengths):
    """TextCNN by explicit windows: word t = max_k relu(W_k . [x_t .. x_{t+k-1}] + b_k), with
    tokens at or beyond the caption's length read as zero."""
    batch, num_tokens, _ = tokens.shape
    words = torch.zeros(batch, num_tokens, head.convs[0].out_channels)
    sentences = []
    for b in range(batch):
        length = int(lengths[b])
        padded = torch.cat([tokens[b, :length], torch.zeros(num_tokens - length + 8, tokens.shape[2])])
        per_kernel = []
        for conv in head.convs:
            k = conv.kernel_size[0]
            responses = torch.stack([
                torch.relu(torch.einsum("oik,ki->o", conv.weight, padded[t : t + k]) + conv.bias)
                for t in range(length)
            ])  # (length, D)
            per_kernel.append(responses)
        stacked = torch.stack(per_kernel)  # (K, length, D)
        words[b, :length] = F.normalize(stacked.amax(0), dim=-1)
        sentences.append(F.normalize(stacked.amax(1).mean(0), dim=-1))
    return words, torch.stack(sentences)


def test_text_head_formula_and_padding():
    torch.manual_seed(1)
    head = TextAlignmentHead(hidden_size=12, dim=10, kernel_sizes=(2, 3, 4))
    tokens = torch.randn(3, 7, 12)
    lengths = torch.tensor([7, 1, 4])
    words, sentence = head(tokens, lengths)
    assert words.shape == (3, 7, 10) and sentence.shape == (3, 10)
    expected_words, expected_sentence = text_head_reference(head, tokens, lengths)
    torch.testing.assert_close(words, expected_words)
    torch.testing.assert_close(sentence, expected_sentence)

    # whatever sits at padded positions changes nothing
    noisy = tokens.clone()
    noisy[1, 1:] = 100.0
    noisy[2, 4:] = -3.0
    noisy_words, noisy_sentence = head(noisy, lengths)
    torch.testing.assert_close(noisy_words, words)
    torch.testing.assert_close(noisy_sentence, sentence)
    assert torch.all(words[2, 4:] == 0)


def test_text_head_gradients_reach_tokens():
    head = TextAlignmentHead(hidden_size=6, dim=4)
    tokens = torch.randn(2, 5, 6, requires_grad=True)
    words, sentence = head(tokens, torch.tensor([5, 3]))
    (words.sum() + sentence.sum()).backward()
    assert tokens.grad[:, :3].abs().sum() > 0
    assert torch.all(tokens.grad[1, 3:] == 0)  # padded tokens take no part


# float16 keeps 11 significant bits (a relative rounding of 2**-11, about 5e-4 per operation); the
# heads' sums of a few dozen products and their normalization stay within a few such roundings of
# float32 on these unit-scale inputs, far below 5e-3, while a NaN or a lost word would be off by O(1).
FLOAT16_TOLERANCE = dict(rtol=0.0, atol=5e-3)


def test_text_head_in_float16_keeps_padded_words_zero_and_matches_float32():
    """F.normalize's eps (1e-12) is 0 in float16: a zeroed padded word became 0/0 = NaN."""
    torch.manual_seed(2)
    head = TextAlignmentHead(hidden_size=12, dim=10, kernel_sizes=(2, 3, 4))
    tokens, lengths = torch.randn(3, 7, 12), torch.tensor([7, 1, 4])
    words, sentence = head(tokens, lengths)
    half_words, half_sentence = head.half()(tokens.half(), lengths)
    assert half_words.dtype == half_sentence.dtype == torch.float16
    assert torch.all(half_words[1, 1:] == 0) and torch.all(half_words[2, 4:] == 0)
    torch.testing.assert_close(half_words.float(), words, **FLOAT16_TOLERANCE)
    torch.testing.assert_close(half_sentence.float(), sentence, **FLOAT16_TOLERANCE)


def test_image_head_in_float16_matches_float32():
    torch.manual_seed(3)
    head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8).eval()
    embedding, region_map = torch.randn(3, 24), torch.randn(3, 16, 4, 5)
    image_global, regions = head(embedding, region_map)
    half_global, half_regions = head.half()(embedding.half(), region_map.half())
    assert half_global.dtype == half_regions.dtype == torch.float16
    torch.testing.assert_close(half_global.float(), image_global, **FLOAT16_TOLERANCE)
    torch.testing.assert_close(half_regions.float(), regions, **FLOAT16_TOLERANCE)


def test_heads_under_autocast_give_float32_unit_rows():
    """Under autocast the 16-bit rows are normalized in float32, as autocast's norm is on CUDA."""
    torch.manual_seed(4)
    head = TextAlignmentHead(hidden_size=12, dim=10)
    tokens, lengths = torch.randn(2, 6, 12), torch.tensor([6, 2])
    with torch.autocast("cpu", dtype=torch.float16):
        words, sentence = head(tokens, lengths)
    assert words.dtype == sentence.dtype == torch.float32
    assert torch.all(words[1, 2:] == 0)
    torch.testing.assert_close(words[0].norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(sentence.norm(dim=-1), torch.ones(2))


def test_heads_reject_bad_inputs():
    image_head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8)
    with pytest.raises(ValueError, match="region_map must have size 16"):
        image_head(torch.randn(2, 24), torch.randn(2, 32, 4, 4))
    with pytest.raises(ValueError, match="embedding must have size 24"):
        image_head(torch.randn(2, 512), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"region_map must have size 2 \(one map per embedding\) in dimension 0"):
        image_head(torch.randn(2, 24), torch.randn(3, 16, 4, 4))  # would pair nothing with the third map
    text_head = TextAlignmentHead(hidden_size=6, dim=4)
    with pytest.raises(ValueError, match="lengths must lie in"):
        text_head(torch.randn(2, 5, 6), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=re.escape("lengths must lie in [1, T=5] (T from words.shape[1]), got values "
                                                   "in [3, 6]")):  # a word past the 5 tokens
        text_head(torch.randn(2, 5, 6), torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="tokens must have size 6"):
        text_head(torch.randn(2, 5, 7), torch.tensor([1, 3]))


@pytest.mark.parametrize("argument, dtype", [("embedding", torch.float16), ("region_map", torch.bfloat16),
                                             ("region_map", torch.float64), ("tokens", torch.float16),
                                             ("tokens", torch.int64)])
def test_heads_refuse_an_input_of_another_dtype_than_their_parameters_naming_it(argument, dtype):
    """A PyTorch error ("mat1 and mat2 must have the same dtype") named neither the argument nor the dtypes."""
    inputs = {"embedding": torch.randn(2, 24), "region_map": torch.randn(2, 16, 4, 4), "tokens": torch.randn(2, 5, 6)}
    inputs[argument] = inputs[argument].to(dtype)
    head = "TextAlignmentHead" if argument == "tokens" else "ImageAlignmentHead"
    with pytest.raises(TypeError, match="^" + re.escape(f"{argument} must have dtype float32, the {head}'s "
                                                        f"parameters, got {str(dtype).removeprefix('torch.')}") + "$"):
        if argument == "tokens":
            TextAlignmentHead(hidden_size=6, dim=4)(inputs["tokens"], torch.tensor([5, 3]))
        else:
            ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8)(inputs["embedding"], inputs["region_map"])


def test_heads_cast_to_bfloat16_refuse_float32_inputs_naming_their_dtype():
    with pytest.raises(TypeError, match=r"^tokens must have dtype bfloat16, the TextAlignmentHead's parameters, "
                                        r"got float32$"):
        TextAlignmentHead(hidden_size=6, dim=4).to(torch.bfloat16)(torch.randn(2, 5, 6), torch.tensor([5, 3]))
    # Under autocast too: the image head's first layer, a BatchNorm, is not one autocast casts, and failed with
    # "mixed dtype (CPU): expect parameter to have scalar type of Float".
    image_head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
            TypeError,
            match=r"^region_map must have dtype bfloat16, the ImageAlignmentHead's parameters, got float32$"):
        image_head(torch.randn(2, 24).bfloat16(), torch.randn(2, 16, 4, 4))
    # Inputs that meet a layer autocast casts first (the embedding a linear layer, the tokens convolutions) run.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_global, _ = image_head(torch.randn(2, 24), torch.randn(2, 16, 4, 4).bfloat16())
        words, _ = TextAlignmentHead(hidden_size=6, dim=4).to(torch.bfloat16)(torch.randn(2, 5, 6), torch.tensor([5, 3]))
    assert image_global.dtype == words.dtype == torch.bfloat16


def test_heads_under_autocast_take_16_bit_inputs_into_float32_parameters():
    """Autocast casts inputs and weights itself, so the dtype check lets them through; the result is the
    float32 heads' on the same (rounded) inputs."""
    torch.manual_seed(5)
    image_head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8).eval()
    text_head = TextAlignmentHead(hidden_size=12, dim=10)
    embedding, region_map = torch.randn(3, 24).half(), torch.randn(3, 16, 4, 5).half()
    tokens, lengths = torch.randn(2, 6, 12).half(), torch.tensor([6, 2])
    expected_image = image_head(embedding.float(), region_map.float())
    expected_text = text_head(tokens.float(), lengths)
    with torch.autocast("cpu", dtype=torch.float16):
        image = image_head(embedding, region_map)
        text = text_head(tokens, lengths)
        # autocast leaves float64 as it is, to meet float16 weights: refused as without autocast
        with pytest.raises(TypeError, match="^tokens must have dtype float32, .* got float64$"):
            text_head(tokens.double(), lengths)
    for actual, expected in zip((*image, *text), (*expected_image, *expected_text)):
        torch.testing.assert_close(actual.float(), expected, **FLOAT16_TOLERANCE)


@pytest.mark.parametrize("kernel_sizes", [(), (2, 0), (3, -1)])
def test_text_head_refuses_kernel_sizes_below_one(kernel_sizes):
    # nn.Conv1d takes kernel_size 0 and only fails in the first forward, without naming the setting.
    with pytest.raises(ValueError, match=re.escape(f"kernel_sizes must be a non-empty list of positive sizes, "
                                                   f"got {kernel_sizes}")):
        TextAlignmentHead(hidden_size=6, kernel_sizes=kernel_sizes)


def test_image_head_runs_on_the_meta_device_in_float16():
    """Shape inference without memory: asking whether autocast is on raised for the meta device. (The
    text head reads its lengths, which meta tensors do not hold.)"""
    with torch.device("meta"):
        head = ImageAlignmentHead(region_channels=16, embedding_dim=24, dim=8).half().eval()
        image_global, regions = head(torch.randn(3, 24, dtype=torch.float16),
                                     torch.randn(3, 16, 4, 5, dtype=torch.float16))
    assert image_global.shape == (3, 8) and regions.shape == (3, 20, 8) and regions.is_meta
    assert regions.dtype == torch.float16


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_text_head_outputs_and_gradients_do_not_see_what_padded_tokens_hold(fill):
    """Padded tokens take no part: multiplying them by a 0/1 mask gave 0 * NaN = NaN in the valid words and
    the sentence. Whatever they hold, outputs and gradients (inputs' and weights') are those of zero padding."""
    torch.manual_seed(0)
    head = TextAlignmentHead(hidden_size=12, dim=10)
    lengths = torch.tensor([6, 2, 4])
    zero_padded = torch.randn(3, 6, 12)
    zero_padded[torch.arange(6)[None, :] >= lengths[:, None]] = 0.0
    filled = zero_padded.clone()
    filled[torch.arange(6)[None, :] >= lengths[:, None]] = fill

    def outputs_and_gradients(tokens):
        tokens = tokens.clone().requires_grad_()
        head.zero_grad()
        words, sentence = head(tokens, lengths)
        # weights away from 1 so that every output element's gradient differs
        (words.square() * torch.linspace(0.5, 2.0, words.shape[-1]) + sentence.cumsum(-1)[:, None, :]).sum().backward()
        return words, sentence, tokens.grad, *(parameter.grad.clone() for parameter in head.parameters())

    for actual, expected in zip(outputs_and_gradients(filled), outputs_and_gradients(zero_padded), strict=True):
        assert torch.equal(actual, expected)
