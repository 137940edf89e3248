import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tgfr.models import AlignedFeatures, IResNetConfig, TGFRConfig, TGFRModel

CAPTIONS = ["a young man with a beard", "blond woman smiling", "an old man with glasses"]


def small_config(text_dir, **overrides) -> TGFRConfig:
    backbone = IResNetConfig.preset("iresnet_small", input_size=32, num_features=64)
    values = dict(backbone=backbone, text_encoder=str(text_dir), max_length=10, dim=16, fine_dim=8)
    return TGFRConfig(**{**values, **overrides})


def test_align_and_fuse_shapes(tiny_bert_dir):
    model = TGFRModel(small_config(tiny_bert_dir))
    batch = model.tokenize(CAPTIONS)
    images = torch.randn(3, 3, 32, 32)
    aligned = model.align(images, **batch)
    assert isinstance(aligned, AlignedFeatures)
    assert aligned.words.shape == (3, 8, 16)
    assert aligned.lengths.tolist() == [len(model.text_encoder.tokenizer.tokenize(c)) for c in CAPTIONS]
    assert aligned.regions.shape == (3, 16, 16)  # 4x4 layer3 grid at 32x32
    assert aligned.sentence.shape == aligned.image_global.shape == (3, 16)
    assert model.fuse(aligned).shape == (3, 8 + 2 * 16) == (3, model.fused_dim)
    with torch.no_grad():
        torch.testing.assert_close(model.embed_image(images), model.backbone(images).embedding)


def test_default_config_is_tgfr():
    model = TGFRModel().eval()
    batch = model.tokenize(["The man has a big nose and bushy eyebrows."])
    with torch.no_grad():
        aligned = model.align(torch.randn(1, 3, 112, 112), **batch)
        fused = model.fuse(aligned)
    assert aligned.words.shape == (1, 22, 256)
    assert aligned.regions.shape == (1, 196, 256)
    assert aligned.sentence.shape == aligned.image_global.shape == (1, 256)
    assert fused.shape == (1, 640)
    # Each default-built model owns its config: changing one (as training does) leaves the next alone.
    model.config.freeze_backbone, model.config.dim = False, 64
    fresh = TGFRModel()
    assert fresh.config == TGFRConfig() and fresh.config is not model.config
    assert fresh.backbone.frozen and fresh.image_head.project_global.out_features == 256


@pytest.mark.parametrize("fusion, size", [("linear", 24), ("concat", 32)])
def test_fusion_baselines_by_config(tiny_bert_dir, fusion, size):
    model = TGFRModel(small_config(tiny_bert_dir, fusion=fusion, fusion_out_dim=24))
    batch = model.tokenize(CAPTIONS[:2])
    assert model(torch.randn(2, 3, 32, 32), **batch).shape == (2, size)


def test_training_step_reaches_text_encoder_but_not_frozen_backbone(tiny_bert_dir):
    model = TGFRModel(small_config(tiny_bert_dir))
    model.train()
    assert not model.backbone.training and model.text_encoder.training
    batch = model.tokenize(CAPTIONS)
    aligned = model.align(torch.randn(3, 3, 32, 32), **batch)
    loss = (aligned.words.sum() + aligned.sentence.sum() + aligned.regions.sum() + model.fuse(aligned).square().sum())
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    encoder_grad = model.text_encoder.model.embeddings.word_embeddings.weight.grad
    assert encoder_grad is not None and encoder_grad.abs().sum() > 0
    for head in (model.image_head, model.text_head, model.fusion):
        assert all(p.grad is not None for p in head.parameters())


def test_trainable_backbone_and_frozen_text(tiny_bert_dir):
    model = TGFRModel(small_config(tiny_bert_dir, freeze_backbone=False, freeze_text_encoder=True))
    aligned = model.align(torch.randn(3, 3, 32, 32), **model.tokenize(CAPTIONS))
    model.fuse(aligned).sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())


@pytest.mark.parametrize("freeze_backbone, freeze_text_encoder", [(True, False), (False, True)])
def test_a_frozen_part_is_in_eval_mode_as_soon_as_the_model_is_built(tiny_bert_dir, freeze_backbone,
                                                                      freeze_text_encoder):
    """No train()/eval() call needed: an embedding right after the build leaves a frozen backbone's
    BatchNorm statistics as they were, and a frozen text model's dropout off; a trainable part is in
    training mode throughout, as a new nn.Module is."""
    model = TGFRModel(small_config(tiny_bert_dir, freeze_backbone=freeze_backbone,
                                   freeze_text_encoder=freeze_text_encoder))
    assert model.training and model.image_head.training
    assert model.backbone.training is not freeze_backbone
    # Every module of a trainable part trains (transformers hands its models back in eval mode, dropout off).
    assert all(module.training is not freeze_text_encoder for module in model.text_encoder.modules())
    assert all(module.training is not freeze_backbone for module in model.backbone.modules())
    running_mean = model.backbone.bn1.running_mean.clone()
    model.embed_image(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.backbone.bn1.running_mean, running_mean) is freeze_backbone


@pytest.mark.parametrize("freeze_backbone, freeze_text_encoder", [(True, True), (False, False)])
def test_requires_grad_keeps_frozen_parts_and_fixed_parameters_off(tiny_bert_dir, freeze_backbone,
                                                                    freeze_text_encoder):
    """model.requires_grad_(True) turns on exactly what trains: nothing of a frozen part, never BERT's
    pooler (the TextCNN head makes the sentence feature from the word features) nor the backbone's
    embedding BatchNorm scale (fixed at 1)."""
    model = TGFRModel(small_config(tiny_bert_dir, freeze_backbone=freeze_backbone,
                                   freeze_text_encoder=freeze_text_encoder))
    names = [name for name, _ in model.named_parameters()]
    never = {"backbone.features.weight"} | {name for name in names if name.startswith("text_encoder.model.pooler.")}
    frozen = {name for name in names if name.startswith(("backbone.",) * freeze_backbone
                                                        + ("text_encoder.",) * freeze_text_encoder)}
    expected = {name for name in names if name not in never | frozen}
    assert len(never) == 3
    for _ in range(2):
        model.requires_grad_(False)
        assert not any(p.requires_grad for p in model.parameters())
        model.requires_grad_(True)
        assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    assert model.requires_grad_() is model


@pytest.mark.parametrize("freeze_backbone, freeze_text_encoder", [(True, False), (False, True)])
def test_a_wrappers_requires_grad_leaves_frozen_parts_and_fixed_parameters_off(tiny_bert_dir, freeze_backbone,
                                                                                freeze_text_encoder):
    """A call that starts above the model (nn.Sequential, DDP, torch.compile's wrapper) runs nn.Module's
    requires_grad_, which sets every parameter directly: frozen parts, which never get a gradient (DDP refuses
    that), were then trainable, and so was the backbone's embedding BatchNorm scale, fixed at 1 (insightface's).
    From the forward on, the trainable set is model.requires_grad_(True)'s; an optimizer over every parameter
    the wrapper lists moves neither a frozen part nor the scale."""
    torch.manual_seed(0)
    model = TGFRModel(small_config(tiny_bert_dir, freeze_backbone=freeze_backbone,
                                   freeze_text_encoder=freeze_text_encoder))
    expected = {name for name, p in model.requires_grad_(True).named_parameters() if p.requires_grad}
    wrapper = torch.nn.Sequential(model)
    wrapper.requires_grad_(False).requires_grad_(True)
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=1.0)
    frozen = model.backbone if freeze_backbone else model.text_encoder
    before = {name: tensor.clone() for name, tensor in frozen.state_dict().items()}
    assert torch.equal(model.backbone.state_dict()["features.weight"], torch.ones(64))
    aligned = model.align(torch.randn(4, 3, 32, 32), **model.tokenize(CAPTIONS + CAPTIONS[:1]))
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    model.fuse(aligned).pow(3).sum().backward()
    optimizer.step()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert torch.equal(model.backbone.state_dict()["features.weight"], torch.ones(64))
    assert all(torch.equal(tensor, before[name]) for name, tensor in frozen.state_dict().items())


def test_a_float16_model_gives_the_float32_embeddings(tiny_bert_dir):
    """model.half() on the CPU: captions shorter than max_length have padded words, which the text
    head's normalization turned into NaN in float16, and the fused embedding with them."""
    torch.manual_seed(0)
    model = TGFRModel(small_config(tiny_bert_dir)).eval()
    images, batch = torch.randn(3, 3, 32, 32), model.tokenize(CAPTIONS)
    assert int(batch["attention_mask"].sum(1).min()) < batch["attention_mask"].shape[1]  # padded captions
    with torch.no_grad():
        fused = F.normalize(model(images, **batch), dim=1)
        face = F.normalize(model.embed_image(images), dim=1)
        model.half()
        half_fused, half_face = model(images.half(), **batch), model.embed_image(images.half())
    assert half_fused.dtype == half_face.dtype == torch.float16
    # float16's relative rounding is 2**-11 (about 5e-4); through the backbone, text encoder, heads and
    # fusion the unit embeddings stay within 1e-2 of float32 (1e-3 measured), where a NaN is off by O(1).
    torch.testing.assert_close(F.normalize(half_fused.float(), dim=1), fused, rtol=0.0, atol=1e-2)
    torch.testing.assert_close(F.normalize(half_face.float(), dim=1), face, rtol=0.0, atol=1e-2)


# mistake -> (input_ids, attention_mask of CAPTIONS tokenized at width 10, vocabulary size) -> the bad pair, and
# the start of the refusal ({vocab}: the vocabulary size).
BAD_TEXT_INPUTS = {
    "2 captions": (lambda ids, mask, vocab: (ids[:2], mask[:2]), "input_ids must have size 3 (the batch size of "
                   "images: one caption per image) in dimension 0, got 2 (shape (2, 10))"),
    "4 captions": (lambda ids, mask, vocab: (torch.cat((ids, ids[:1])), torch.cat((mask, mask[:1]))),
                   "input_ids must have size 3 (the batch size of images: one caption per image) in dimension 0, "
                   "got 4 (shape (4, 10))"),
    "mask of 2s": (lambda ids, mask, vocab: (ids, mask * 2), "attention_mask must hold only 0s and 1s (or bools), "
                   "got 2"),
    "mask padded on the left": (lambda ids, mask, vocab: (ids, mask.flip(1)), "attention_mask must be right-padded"),
    "mask of another shape": (lambda ids, mask, vocab: (ids, mask[:, :4]), "attention_mask must have the shape of "
                              "input_ids (3, 10), got (3, 4)"),
    "id past the vocabulary": (lambda ids, mask, vocab: (ids.index_fill(1, torch.tensor([1]), vocab), mask),
                               "input_ids must lie in [0, {vocab}), the vocabulary of the text encoder"),
    "caption without a word": (lambda ids, mask, vocab: (ids, mask.index_fill(1, torch.arange(2, 10), 0)),
                               "attention_mask row 0 attends 2 tokens"),
}


@pytest.mark.parametrize("mistake", list(BAD_TEXT_INPUTS))
def test_captions_for_another_number_of_images_or_bad_text_inputs_are_refused_before_the_backbone_runs(
        tiny_bert_dir, mistake):
    """The text encoder's checks ran after the backbone had spent the batch (iresnet100 at a large batch)."""
    model = TGFRModel(small_config(tiny_bert_dir)).eval()
    batch = model.tokenize(CAPTIONS)
    edit, message = BAD_TEXT_INPUTS[mistake]
    vocab = model.text_encoder.model.config.vocab_size
    input_ids, attention_mask = edit(batch["input_ids"], batch["attention_mask"], vocab)
    calls = []
    model.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs))
    with torch.no_grad():
        for call in (model, model.align):
            with pytest.raises(ValueError, match="^" + re.escape(message.format(vocab=vocab))):
                call(torch.randn(3, 3, 32, 32), input_ids, attention_mask)
    assert calls == []


def test_an_empty_batch_is_refused_by_name_before_the_backbone_runs(tiny_bert_dir):
    model = TGFRModel(small_config(tiny_bert_dir)).eval()
    calls = []
    model.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs))
    empty = torch.zeros(0, 10, dtype=torch.int64)
    with torch.no_grad():
        for call in (model, model.align):
            with pytest.raises(ValueError, match=re.escape("input_ids must not be empty along dimension 0")):
                call(torch.randn(0, 3, 32, 32), empty, empty)
    assert calls == []


def test_autocast_runs_the_float32_model_on_float32_images(tiny_bert_dir):
    torch.manual_seed(0)
    model = TGFRModel(small_config(tiny_bert_dir)).eval()
    images, batch = torch.randn(3, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        fused = F.normalize(model(images, **batch), dim=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_fused = F.normalize(model(images, **batch).float(), dim=1)
            autocast_face = model.embed_image(images)
    assert autocast_face.dtype == torch.bfloat16
    assert F.cosine_similarity(autocast_fused, fused).min() > 0.99  # bf16 rounds at 2**-8


@pytest.mark.parametrize("fusion", ["concat", "fcfm"])
def test_fuse_places_image_global_before_sentence(tiny_bert_dir, fusion):
    model = TGFRModel(small_config(tiny_bert_dir, fusion=fusion)).eval()
    with torch.no_grad():
        aligned = model.align(torch.randn(2, 3, 32, 32), **model.tokenize(CAPTIONS[:2]))
        fused = model.fuse(aligned)
        if fusion == "concat":
            expected = torch.cat((aligned.image_global, aligned.sentence), dim=1)
        else:  # documented FCFM layout: [fine (fine_dim) | norm_image(image_global) | norm_sentence(sentence)]
            expected = torch.cat((model.fusion.norm_image(aligned.image_global),
                                  model.fusion.norm_sentence(aligned.sentence)), dim=1)
            fused = fused[:, model.config.fine_dim:]
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("field, value", [("dim", 16.0), ("fine_dim", True), ("fusion_out_dim", "640")])
def test_a_size_of_another_type_is_refused_naming_the_field(field, value):
    """Given in Python (config.json's types are checked by from_dict): a float failed in PyTorch's layer build
    ("empty(): argument 'size' ... must be tuple of ints"), naming no field."""
    with pytest.raises(TypeError, match="^" + re.escape(f"{field} must be an integer, got {type(value).__name__} "
                                                        f"{value!r}") + "$"):
        TGFRConfig(**{field: value})
    with pytest.raises(ValueError, match=f"^{field} must be an integer >= 1, got 0$"):
        TGFRConfig(**{field: 0})
    config = TGFRConfig(**{field: np.int64(24)})  # a numpy size is taken as the int it is, which config.json takes
    assert type(getattr(config, field)) is int and config == TGFRConfig(**{field: 24})


def test_aligned_image_features_come_from_the_images_and_text_features_from_the_captions(tiny_bert_dir):
    """Each feature of align changes with its own input only: swapped in AlignedFeatures, image_global would
    follow the captions and sentence the images (both are (B, D) and unit rows, so no shape check sees it)."""
    torch.manual_seed(0)
    model = TGFRModel(small_config(tiny_bert_dir)).eval()
    images, other_images = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    captions, other_captions = model.tokenize(CAPTIONS), model.tokenize(CAPTIONS[::-1])
    with torch.no_grad():
        reference = model.align(images, **captions)
        new_images = model.align(other_images, **captions)
        new_captions = model.align(images, **other_captions)

    def differs(first, second):
        return bool((first - second).abs().amax(dim=-1).min() > 1e-3)  # in every row

    for name in ("regions", "image_global"):
        torch.testing.assert_close(getattr(new_captions, name), getattr(reference, name))
        assert differs(getattr(new_images, name), getattr(reference, name)), name
    for name in ("words", "lengths", "sentence"):
        torch.testing.assert_close(getattr(new_images, name), getattr(reference, name))
    # CAPTIONS[1] stays in the middle: rows 0 and 2 change.
    assert differs(new_captions.sentence[::2], reference.sentence[::2])
    torch.testing.assert_close(new_captions.sentence[1], reference.sentence[1])


def test_an_empty_text_encoder_is_refused_by_its_config_name(tiny_bert_dir, monkeypatch):
    """As a Path, "" is ".": run from inside a model folder, the model took that folder's text model; in the
    training config's TOML, text_encoder = "" means the packaged MiniLM, which TGFRConfig spells None."""
    monkeypatch.chdir(tiny_bert_dir)
    with pytest.raises(ValueError, match=r"^config\.text_encoder is empty: name the text model folder, or give None "
                                         r"for the packaged all-MiniLM-L6-v2$"):
        TGFRModel(small_config(""))


def test_a_model_built_under_a_float64_default_dtype_runs_in_float64(tiny_bert_dir):
    """The backbone and heads follow the default dtype; the text model was fixed at float32 and the first
    forward raised a TypeError."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = TGFRModel(small_config(tiny_bert_dir)).eval()
    finally:
        torch.set_default_dtype(previous)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float64}
    images, batch = torch.randn(3, 3, 32, 32, dtype=torch.float64), model.tokenize(CAPTIONS)
    with torch.no_grad():
        fused = model(images, **batch)
        # Independently: the same weights in float32 give the same embedding to float32's rounding.
        expected = model.float()(images.float(), **batch)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused.float(), expected, rtol=1e-4, atol=1e-5)
