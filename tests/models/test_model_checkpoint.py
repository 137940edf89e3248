import dataclasses
import json
import os
import re
import resource
import shutil
import stat

import pytest
import safetensors.torch
import torch
from transformers import AutoTokenizer

import tgfr.models.checkpoint as checkpoint_module
from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel, load_tgfr_model, load_weights_file, save_tgfr_model
from tgfr.models.text_encoder import TextModelFilesError

CAPTIONS = ["a young man with a beard", "blond woman smiling"]


def build(text_dir, fusion="fcfm", dim=16) -> TGFRModel:
    backbone = IResNetConfig.preset("iresnet_small", input_size=32, num_features=64, dropout=0.1)
    config = TGFRConfig(backbone=backbone, text_encoder=str(text_dir), max_length=10, dim=dim, fine_dim=8,
                        fusion=fusion)
    return TGFRModel(config)


@pytest.mark.parametrize("fusion", ["fcfm", "linear"])
def test_round_trip_gives_identical_outputs(tiny_bert_dir, tmp_path, fusion):
    torch.manual_seed(0)
    # the checkpoint must not depend on the directory the text model came from
    source = tmp_path / "text_source"
    shutil.copytree(tiny_bert_dir, source)
    model = build(source, fusion)
    # one training step so that parameters and BN statistics differ from a fresh build
    aligned = model.align(torch.randn(4, 3, 32, 32), **model.tokenize(CAPTIONS * 2))
    model.fuse(aligned).square().sum().backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
        model.backbone.bn2.running_mean.add_(0.3)  # the frozen backbone keeps its statistics otherwise
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    shutil.rmtree(source)
    config_text = (checkpoint / "config.json").read_text()
    assert json.loads(config_text)["text_encoder"] == "text_encoder"  # relative: the checkpoint folder can move
    assert str(source) not in config_text

    loaded = load_tgfr_model(checkpoint)
    assert loaded.config.backbone == model.config.backbone
    assert loaded.config.fusion == fusion
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)

    model.eval(), loaded.eval()
    images, batch = torch.randn(2, 3, 32, 32), model.tokenize(CAPTIONS)
    assert torch.equal(loaded.tokenize(CAPTIONS)["input_ids"], batch["input_ids"])
    with torch.no_grad():
        expected, actual = model.align(images, **batch), loaded.align(images, **batch)
        for x, y in zip(expected, actual):
            assert torch.equal(x, y)
        assert torch.equal(model.fuse(expected), loaded.fuse(actual))


def distributed(model):
    """model in DistributedDataParallel, in a one-process gloo group made for it."""
    if not torch.distributed.is_initialized():
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    return torch.nn.parallel.DistributedDataParallel(model)


@pytest.mark.parametrize("wrap", [torch.compile, torch.nn.DataParallel, distributed],
                         ids=["compile", "DataParallel", "DistributedDataParallel"])
def test_a_wrapped_model_saves_the_model_inside(tiny_bert_dir, tmp_path, wrap):
    """The wrappers' state dicts prefix every name (_orig_mod., module.): saved as they are, the
    checkpoint would not load."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir)
    try:
        loaded = load_tgfr_model(save_tgfr_model(wrap(model), tmp_path / "checkpoint"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)


def test_saving_what_is_not_a_tgfr_model_is_refused_naming_the_argument(tmp_path):
    with pytest.raises(TypeError, match=r"^model: expected a TGFRModel .*, got Linear$"):
        save_tgfr_model(torch.compile(torch.nn.Linear(2, 2)), tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()


def test_parts_frozen_after_the_build_are_saved_frozen(tiny_bert_dir, tmp_path):
    """The config the model was built with says both parts train; freeze() afterwards must carry into the
    checkpoint, or the loaded model would train (and move the BatchNorm statistics of) a frozen part."""
    model = TGFRModel(dataclasses.replace(build(tiny_bert_dir).config, freeze_backbone=False))
    model.backbone.freeze()
    model.text_encoder.freeze()
    loaded = load_tgfr_model(save_tgfr_model(model, tmp_path / "checkpoint"))
    assert loaded.backbone.frozen and loaded.text_encoder.frozen
    assert loaded.config.freeze_backbone and loaded.config.freeze_text_encoder
    assert not any(p.requires_grad for p in [*loaded.backbone.parameters(), *loaded.text_encoder.parameters()])
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["freeze_backbone"] is True and saved["freeze_text_encoder"] is True


def test_a_model_saved_with_sentence_pooling_loads_and_trains_every_trainable_parameter(tiny_bert_dir, tmp_path):
    """Saved models' configs held "sentence_pooling", which never had an effect: the TextCNN head makes
    the sentence feature from the word features. Such a config loads; "pooled" with a trainable text
    encoder made BERT's pooler trainable though it never gets a gradient (DDP without
    find_unused_parameters refuses that at the next step)."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir)
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    config_file = checkpoint / "config.json"
    values = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**values, "sentence_pooling": "pooled", "freeze_text_encoder": False}))
    loaded = load_tgfr_model(config_file.parent)
    loaded.train().requires_grad_(True)
    aligned = loaded.align(torch.randn(4, 3, 32, 32), **loaded.tokenize(CAPTIONS * 2))
    (loaded.fuse(aligned).square().sum() + aligned.sentence.sum()).backward()
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert "text_encoder.model.embeddings.word_embeddings.weight" in trainable
    assert [name for name, p in loaded.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(name.startswith("text_encoder.model.pooler.") for name in trainable)
    expected = TGFRConfig.from_dict({**values, "freeze_text_encoder": False,
                                     "text_encoder": str(checkpoint / "text_encoder")})
    assert loaded.config == expected  # the key is ignored
    assert "sentence_pooling" not in values  # models are saved without it now


def test_a_half_precision_text_model_is_built_saved_and_loaded_in_float32(tiny_half_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = build(tiny_half_bert_dir).eval()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    with torch.no_grad():
        for parameter in model.text_encoder.parameters():  # fine-tuned values float16 cannot hold
            parameter.add_(1e-4 * torch.randn_like(parameter))
    images, batch = torch.randn(2, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        expected = model.fuse(model.align(images, **batch))

    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    assert json.loads((checkpoint / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    loaded = load_tgfr_model(checkpoint)
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    with torch.no_grad():
        assert torch.equal(loaded.fuse(loaded.align(images, **batch)), expected)


def test_the_saved_text_config_names_the_dtype_of_the_saved_text_weights(tiny_bert_dir, tmp_path):
    """A model cast to bfloat16 after it was built (its text config still says float32) saves bfloat16 text
    weights, and text_encoder/config.json says so; cast back, it says float32 again."""
    model = build(tiny_bert_dir).to(torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        checkpoint = save_tgfr_model(model.to(dtype), tmp_path / str(dtype))
        saved = safetensors.torch.load_file(checkpoint / "model.safetensors")
        assert {saved[k].dtype for k in saved if k.startswith("text_encoder.model.")} == {dtype}
        assert json.loads((checkpoint / "text_encoder" / "config.json").read_text())["dtype"] == str(dtype)[6:]
        # And it loads: BF16 tensors are floating (a header dtype read as integer refused every one of them).
        loaded = load_tgfr_model(checkpoint).state_dict()
        assert all(torch.equal(loaded[k].to(saved[k].dtype), saved[k]) for k in saved)


def test_a_loaded_model_is_in_eval_mode_and_its_embeddings_do_not_depend_on_the_batch(tiny_bert_dir, tmp_path):
    """In training mode the image head's BatchNorm normalizes by the batch's own statistics and moves
    its running statistics at every call, no_grad or not."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir)
    with torch.no_grad():  # running statistics away from BatchNorm's initial (0, 1)
        model.align(torch.randn(8, 3, 32, 32), **model.tokenize(CAPTIONS * 4))
    loaded = load_tgfr_model(save_tgfr_model(model, tmp_path / "checkpoint"))
    assert [name for name, module in loaded.named_modules() if module.training] == []
    buffers = {name: buffer.clone() for name, buffer in loaded.named_buffers()}
    assert not torch.equal(buffers["image_head.norm_map.running_mean"], torch.zeros(16))

    images = torch.randn(5, 3, 32, 32)
    captions = ["a young man with a beard", "blond woman smiling", "old man", "a woman with glasses", "young man"]
    with torch.no_grad():
        together = loaded(images, **loaded.tokenize(captions)), loaded.embed_image(images)
        first_two = loaded(images[:2], **loaded.tokenize(captions[:2])), loaded.embed_image(images[:2])
        alone = [(loaded(images[i:i + 1], **loaded.tokenize(captions[i:i + 1])), loaded.embed_image(images[i:i + 1]))
                 for i in range(5)]
    for i in range(5):
        for batched, single in zip(together, alone[i]):
            torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-5, atol=1e-5)
    for batched, pair in zip(together, first_two):
        torch.testing.assert_close(batched[:2], pair, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in loaded.named_buffers())


def test_checkpoint_errors_name_the_file(tiny_bert_dir, tmp_path):
    model = build(tiny_bert_dir)
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**config, "surprise": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_tgfr_model(checkpoint)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_tgfr_model(checkpoint)
    for corrupt in (None, [config], {**config, "dim": "16"}, {**config, "freeze_backbone": "no"},
                    {**config, "backbone": None}, {**config, "backbone": {**config["backbone"], "width": 4.5}},
                    {**config, "text_kernel_sizes": [2, None]}, {**config, "fusion": "bogus"},
                    {**config, "dim": -1}, {**config, "dim": 0}, {**config, "fine_dim": 0},
                    {**config, "fusion_out_dim": -2}):
        config_path.write_text(json.dumps(corrupt))
        with pytest.raises(ValueError, match=f"checkpoint file '{config_path}' does not describe a model"):
            load_tgfr_model(checkpoint)
    config_path.write_text(json.dumps({**config, "dim": 32}))  # weights no longer fit
    with pytest.raises(ValueError, match="model.safetensors"):
        load_tgfr_model(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("section, key", [(None, "max_length"), (None, "freeze_text_encoder"), (None, "text_encoder"),
                                          ("backbone", "dropout")])
def test_a_config_without_a_key_is_refused_naming_the_file_and_the_key(tiny_bert_dir, tmp_path, section, key):
    """A missing key took its default silently: a model saved with max_length 10 loaded with 24, and captions
    of more word pieces than 8 gave other embeddings. Every tgfr has saved every key."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    del (config[section] if section else config)[key]
    config_path.write_text(json.dumps(config))
    where = f"config {section}" if section else "config"
    with pytest.raises(ValueError, match="^" + re.escape(f"checkpoint file '{config_path}' does not describe a model: "
                                                         f"{where} lacks the keys ['{key}']") + "$"):
        load_tgfr_model(checkpoint)


def test_an_integer_in_a_float_field_of_the_config_loads(tiny_bert_dir, tmp_path):
    """JSON writes 0.0 as 0 in some hands (a config edited by another tool): the value is the same."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["backbone"]["dropout"] = 0
    config_path.write_text(json.dumps(config))
    assert load_tgfr_model(checkpoint).config.backbone.dropout == 0.0


@pytest.mark.parametrize("given, problem", [("file", "is a file, not a folder"), ("missing", "does not exist")])
def test_a_checkpoint_folder_that_is_no_folder_is_named_as_the_folder(tmp_path, given, problem):
    """It was named as its config.json, which "does not exist": for a file that points away from the mistake."""
    path = tmp_path / given
    if given == "file":
        path.write_text("weights\n")
    with pytest.raises(ValueError, match=f"^{re.escape(f'checkpoint folder {str(path)!r} {problem}')}$"):
        load_tgfr_model(path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_a_checkpoint_weight_of_another_dtype_kind_is_refused_naming_the_file_and_the_key(tiny_bert_dir, tmp_path,
                                                                                          dtype):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    weights_path = checkpoint / "model.safetensors"
    state = safetensors.torch.load_file(weights_path)
    state["backbone.conv1.weight"] = state["backbone.conv1.weight"].to(dtype)  # would load as zeros, ones or real parts
    safetensors.torch.save_file(state, weights_path)
    kind = "integer" if dtype == torch.int64 else str(dtype).removeprefix("torch.").rstrip("0123456789")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {str(weights_path)!r} holds tensors of another "
                                                   f"kind than the model's: backbone.conv1.weight (model: floating, "
                                                   f"file: {kind})")):
        load_tgfr_model(checkpoint)


def test_a_config_nested_too_deeply_is_reported_as_invalid_json_naming_the_file(tiny_bert_dir, tmp_path):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    (checkpoint / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {str(checkpoint / 'config.json')!r} is not valid "
                                                   "JSON: arrays or objects nested too deeply")):
        load_tgfr_model(checkpoint)


class NotATensor:
    pass


def test_weights_file_never_unpickles_objects(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": NotATensor()}, path)
    with pytest.raises(ValueError, match="backbone.pth"):
        load_weights_file(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="state dict"):
        load_weights_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_weights_file(tmp_path / "missing.pth")


def test_a_safetensors_suffix_in_any_case_is_read_as_safetensors(tmp_path):
    """W.SAFETENSORS went to torch.load, whose error called it a refused pickle."""
    path = tmp_path / "W.SAFETENSORS"
    safetensors.torch.save_file({"conv1.weight": torch.ones(2, 3)}, path)
    assert torch.equal(load_weights_file(path)["conv1.weight"], torch.ones(2, 3))


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {"conv1.weight": torch.zeros(1)}}, "entry 'state_dict' is not a tensor but dict"),
    ({"conv1.weight": torch.zeros(1), "epoch": 3}, "entry 'epoch' is not a tensor but int"),
    (None, "could not be read: it is corrupt, truncated or not a file torch.save wrote"),  # an empty file
])
def test_a_weights_file_that_is_not_a_state_dict_names_what_it_holds(tmp_path, content, message):
    path = tmp_path / "backbone.pth"
    if content is None:
        path.write_bytes(b"")
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=re.escape(f"weights file {str(path)!r}") + ".*" + re.escape(message)):
        load_weights_file(path)


def test_a_weights_path_that_is_a_folder_is_reported_as_a_folder(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"weights file {str(tmp_path)!r} is a folder, not a file")):
        load_weights_file(tmp_path)


@pytest.mark.parametrize("name, content", [
    ("config.json", "{"), ("config.json", "[1]"), ("config.json", '{"model_type": "bert", "hidden_size": "x"}'),
    ("tokenizer_config.json", "{"), ("tokenizer_config.json", "[1]"), ("tokenizer_config.json", b"\xff\xfe"),
    ("tokenizer.json", "{"), ("tokenizer.json", "{}"),
])
def test_a_broken_text_model_file_is_reported_with_the_text_model_folder(tiny_bert_dir, tmp_path, name, content):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    text_dir = checkpoint / "text_encoder"
    assert (text_dir / name).is_file()
    if isinstance(content, bytes):
        (text_dir / name).write_bytes(content)
    else:
        (text_dir / name).write_text(content)
    with pytest.raises(ValueError) as raised:
        load_tgfr_model(checkpoint)
    message = str(raised.value)
    assert f"text model folder {text_dir}" in message
    assert f"'{checkpoint / 'config.json'}'" not in message  # the checkpoint's own config is fine


def test_a_missing_text_model_folder_is_named(tiny_bert_dir, tmp_path):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    shutil.rmtree(checkpoint / "text_encoder")
    with pytest.raises(ValueError, match=f"checkpoint folder '{checkpoint / 'text_encoder'}'.* does not exist"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_folder_where_a_checkpoint_file_should_be_is_named_as_one(tiny_bert_dir, tmp_path, name):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    (checkpoint / name).unlink()
    (checkpoint / name).mkdir()
    with pytest.raises(ValueError, match=f"^checkpoint file '{checkpoint / name}' is a folder, not a file$"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("key, value", [("input_size", 10**6), ("input_size", 64), ("width", 10**5),
                                        ("num_features", 10**9)])
def test_a_backbone_that_does_not_fit_the_weights_is_refused_before_it_is_built(tiny_bert_dir, tmp_path, key, value):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["backbone"][key] = value
    config_path.write_text(json.dumps(config))
    # Building iresnet_small at 32 x 32 with num_features 64 gives fc.weight (64, 128 * 2 * 2).
    with pytest.raises(ValueError, match=rf"'{config_path}' does not fit its weights: .*backbone.{key} {value}.*"
                                         rf"holds \(64, 512\)"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("file, key, value", [("config.json", "dim", 10**8),
                                              ("config.json", "text_kernel_sizes", [2, 3, 10**8]),
                                              ("text_encoder/config.json", "hidden_size", 10**8)])
def test_a_config_that_does_not_fit_the_weights_is_refused_before_anything_is_allocated(
        tiny_bert_dir, tmp_path, monkeypatch, file, key, value):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / file
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    allocated = []  # the sizes of every real (not meta) tensor the load creates before it fails
    empty = torch.empty

    def recording_empty(*size, **options):
        tensor = empty(*size, **options)
        if tensor.device.type != "meta":
            allocated.append(tensor.numel())
        return tensor

    monkeypatch.setattr(torch, "empty", recording_empty)
    with pytest.raises(ValueError) as raised:
        load_tgfr_model(checkpoint)
    message = str(raised.value)
    text_config = checkpoint / "text_encoder" / "config.json"
    assert message.startswith(f"checkpoint files '{checkpoint / 'config.json'}' and '{text_config}' describe a model "
                              f"that does not fit the weights in '{checkpoint / 'model.safetensors'}': it has ")
    assert "100000000" in message  # the shapes it lists are the ones the changed size gives
    assert sum(allocated) < 10**6  # the tiny model's own size; the described one has at least 10**8 values


@pytest.mark.parametrize("section, key, value", [(None, "dim", 10**10), ("backbone", "width", 10**9),
                                                 (None, "fine_dim", 10**19), ("backbone", "input_size", 10**12)])
def test_a_size_past_what_pytorch_can_hold_is_refused_on_one_line_naming_the_config(tiny_bert_dir, tmp_path,
                                                                                     section, key, value):
    """dim 10**10 escaped as PyTorch's RuntimeError (a storage size past int64) naming no file; fine_dim 10**19
    was named, but with PyTorch's C++ backtrace (a long long that overflows) in the message."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    (config[section] if section else config)[key] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as raised:
        load_tgfr_model(checkpoint)
    message = str(raised.value)
    assert message.startswith(f"checkpoint file '{config_path}' does not describe a model: ")
    assert "\n" not in message and len(message) < 400, message


def _no_model_is_built(monkeypatch) -> None:
    """load_tgfr_model fails the test if it builds the described model, on the meta device or for real."""
    def build(*args, **kwargs):
        raise AssertionError("the described model was built before its layer counts were checked")

    monkeypatch.setattr(checkpoint_module, "TGFRModel", build)


def test_a_huge_block_count_is_refused_at_once_naming_the_config(tiny_bert_dir, tmp_path, monkeypatch):
    """The check built the described model on the meta device first, about 15 ms a backbone block or text
    model layer: 10**7 of them would build for days before "missing ..." came. The refusal comes before any build
    (a timed check would only fail once the days had passed)."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    _no_model_is_built(monkeypatch)
    for layers in ([1, 2, 1, 1], [1, 1, 1, 10**7]):
        config["backbone"]["layers"] = layers
        config_path.write_text(json.dumps(config))
        with pytest.raises(ValueError, match="^" + re.escape(
                f"checkpoint file '{config_path}' does not fit its weights: backbone.layers {layers}, "
                f"'{checkpoint / 'model.safetensors'}' holds [1, 1, 1, 1] blocks per stage") + "$"):
            load_tgfr_model(checkpoint)


@pytest.mark.parametrize("text_model", ["tiny_bert_dir", "tiny_clip_text_dir", "tiny_full_clip_dir"])
def test_a_huge_text_layer_count_is_refused_at_once_naming_the_config(text_model, request, tmp_path, monkeypatch):
    """The text model's layers, as slow to build on meta: BERT's encoder.layer.<i>, CLIP's encoder.layers.<i>,
    and a full CLIP's config.json states the count in text_config. (A saved model writes its text tower's
    config; a full CLIP's config.json put in its place loads too, as the text model folder it came from did.)"""
    folder = request.getfixturevalue(text_model)
    checkpoint = save_tgfr_model(build(folder), tmp_path / "checkpoint")
    text_config = checkpoint / "text_encoder" / "config.json"
    values = json.loads((folder if text_model == "tiny_full_clip_dir" else checkpoint / "text_encoder").joinpath(
        "config.json").read_text())
    if text_model == "tiny_full_clip_dir":
        assert "text_config" in values
        text_config.write_text(json.dumps(values))
        load_tgfr_model(checkpoint)
    counted = values["text_config"] if "text_config" in values else values
    held = counted["num_hidden_layers"]
    _no_model_is_built(monkeypatch)
    for layers in (held + 1, 10**7):
        counted["num_hidden_layers"] = layers
        text_config.write_text(json.dumps(values))
        with pytest.raises(ValueError, match="^" + re.escape(
                f"checkpoint file '{text_config}' does not fit the weights: num_hidden_layers {layers}, "
                f"'{checkpoint / 'model.safetensors'}' holds {held} layers of the text model") + "$"):
            load_tgfr_model(checkpoint)


def test_a_text_config_with_fewer_layers_than_the_weights_names_the_configs_and_counts_the_unexpected(
        tiny_bert_dir, tmp_path):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    stored = set(TGFRModel(TGFRConfig.from_dict({**json.loads((checkpoint / "config.json").read_text()),
                                                 "text_encoder": str(checkpoint / "text_encoder")}),
                           pretrained_text=False).state_dict())
    text_config = checkpoint / "text_encoder" / "config.json"
    text_config.write_text(json.dumps({**json.loads(text_config.read_text()), "num_hidden_layers": 1}))
    described = TGFRModel(TGFRConfig.from_dict({**json.loads((checkpoint / "config.json").read_text()),
                                                "text_encoder": str(checkpoint / "text_encoder")}),
                          pretrained_text=False).state_dict()
    unexpected = sorted(stored - set(described))
    with pytest.raises(ValueError) as raised:
        load_tgfr_model(checkpoint)
    assert str(raised.value) == (
        f"checkpoint file '{checkpoint / 'model.safetensors'}' does not match the model that "
        f"'{checkpoint / 'config.json'}' and '{text_config}' describe: missing none, unexpected "
        f"{'; '.join(unexpected[:5])} and {len(unexpected) - 5} more")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_every_model_file_gets_the_umask_permissions(tiny_bert_dir, tmp_path, umask):
    previous = os.umask(umask)
    try:
        directory = save_tgfr_model(build(tiny_bert_dir), tmp_path / "model")
        (tmp_path / "probe").write_text("")  # a file written the ordinary way
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "probe").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.rglob("*") if path.is_file()} == {
        path.name: expected for path in directory.rglob("*") if path.is_file()}


def files_under(directory) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.mark.parametrize("failing", ["text_encoder/tokenizer.json", "model.safetensors"])
def test_a_save_that_fails_halfway_leaves_the_earlier_checkpoint_loading_and_names_the_folder(
        tiny_bert_dir, tmp_path, failing):
    """A full disk (RLIMIT_FSIZE makes every write past it fail with EFBIG; Python ignores SIGXFSZ) while
    the tokenizer's files or the weights of a model of another dim are written must leave the earlier
    checkpoint as it was: neither a cut tokenizer.json nor the new config.json beside the old weights."""
    torch.manual_seed(0)
    earlier, later = build(tiny_bert_dir), build(tiny_bert_dir, dim=32)
    directory = save_tgfr_model(earlier, tmp_path / "checkpoint")
    before = files_under(directory)
    sizes = {name: len(content) for name, content in before.items()}
    # the largest text model file is the tokenizer's, and even it is under half of the weights
    assert max(sizes, key=lambda name: (name.startswith("text_encoder/"), sizes[name])) == "text_encoder/tokenizer.json"
    assert sizes["text_encoder/tokenizer.json"] < sizes["model.safetensors"] // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (sizes[failing] // 2, hard))
    try:
        with pytest.raises(OSError, match=re.escape(f"cannot write checkpoint folder {directory}: ")):
            save_tgfr_model(later, directory)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert files_under(directory) == before
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint"]  # nothing staged left behind
    loaded = load_tgfr_model(directory)
    assert loaded.config.dim == 16
    assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in earlier.state_dict().items())


def test_a_save_over_a_checkpoint_renames_config_json_into_place_last(tiny_bert_dir, tmp_path, monkeypatch):
    """A process killed among the renames must leave the earlier config.json, which describes the earlier
    weights, until every other entry is new: a new config beside the old weights (of another dim) loads nothing."""
    torch.manual_seed(0)
    directory = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    folder = os.path.realpath(directory)
    renamed = []  # names renamed into the checkpoint folder, in order
    for function in ("replace", "rename"):
        def recording(source, destination, *args, original=getattr(os, function), **kwargs):
            if os.path.dirname(destination) == folder:
                renamed.append(os.path.basename(destination))
            return original(source, destination, *args, **kwargs)
        monkeypatch.setattr(os, function, recording)
    # Listed in name order, config.json comes first: the order the staging folder happens to list in (by
    # creation, by hash) cannot put it last by chance.
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda *path: sorted(listdir(*path)))
    save_tgfr_model(build(tiny_bert_dir, dim=32), directory)
    entries = [name for name in renamed if not name.startswith(".")]  # the old text_encoder/ is first moved aside
    assert sorted(entries) == ["config.json", "model.safetensors", "text_encoder"]
    assert entries[-1] == "config.json"


@pytest.mark.parametrize("linked", [False, True])
def test_a_save_over_a_checkpoint_replaces_its_entries_whole_and_keeps_a_users_other_files(
        tiny_bert_dir, tmp_path, linked):
    torch.manual_seed(0)
    earlier, later = build(tiny_bert_dir), build(tiny_bert_dir, dim=32)
    folder = save_tgfr_model(earlier, tmp_path / "folder")
    (folder / "README.md").write_text("trained on run 7\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "eval.txt").write_text("TAR 0.91\n")
    (folder / "text_encoder" / "stale.txt").write_text("not a file of the new checkpoint\n")
    directory = tmp_path / "link" if linked else folder
    if linked:
        directory.symlink_to(folder, target_is_directory=True)
    inode = os.stat(folder).st_ino
    assert save_tgfr_model(later, directory) == directory
    # The folder itself stays (only its entries are renamed): it may be a mount point, a process's
    # working directory, or owned by another user than the one saving into it.
    assert os.stat(folder).st_ino == inode
    assert directory.is_symlink() == linked
    assert (folder / "README.md").read_text() == "trained on run 7\n"
    assert (folder / "notes" / "eval.txt").read_text() == "TAR 0.91\n"
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "notes", "text_encoder"]
    assert not (folder / "text_encoder" / "stale.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == (["folder", "link"] if linked else ["folder"])
    loaded = load_tgfr_model(directory)
    assert loaded.config.dim == 32
    assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in later.state_dict().items())


@pytest.mark.parametrize("text_model", ["tiny_bert_dir", "tiny_full_clip_dir"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_model_saved_in_16_bits_loads_in_float32_and_gives_the_16_bit_weights_outputs(text_model, dtype, request,
                                                                                          tmp_path):
    """text_encoder/config.json names the saved weights' dtype ("dtype": "float16"); the text model built afresh
    for the weights must not take it, or it is float16 beside the float32 heads and every forward fails. A full
    CLIP's config.json in its place is built by CLIP's own branch (its text tower)."""
    folder = request.getfixturevalue(text_model)
    torch.manual_seed(0)
    model = build(folder).eval().to(dtype)
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    text_config = checkpoint / "text_encoder" / "config.json"
    dtype_name = str(dtype).removeprefix("torch.")
    assert json.loads(text_config.read_text())["dtype"] == dtype_name
    if text_model == "tiny_full_clip_dir":
        values = json.loads((folder / "config.json").read_text())
        values = {**values, "dtype": dtype_name, "text_config": {**values["text_config"], "dtype": dtype_name}}
        text_config.write_text(json.dumps(values))
    loaded = load_tgfr_model(checkpoint)
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float32}
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(loaded_state[k].to(saved_state[k].dtype), saved_state[k]) for k in saved_state)
    # float32 holds every 16-bit value: the loaded model is the saved one cast to float32
    images, batch = torch.randn(2, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(loaded(images, **batch), model.float()(images, **batch))


def test_a_channels_last_model_round_trips(tiny_bert_dir, tmp_path):
    """channels_last, a common speed setting for a convolutional backbone, leaves the 4-D weights not
    contiguous, and safetensors refuses to save those."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir).eval().to(memory_format=torch.channels_last)
    assert not model.backbone.conv1.weight.is_contiguous()
    loaded = load_tgfr_model(save_tgfr_model(model, tmp_path / "checkpoint")).to(memory_format=torch.channels_last)
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    images, batch = torch.randn(2, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(loaded(images, **batch), model(images, **batch))


@pytest.mark.parametrize("section, key, value, expected", [
    ("backbone", "layers", [True, 1, 1, 1], "a list of integers"),  # True == 1 would pass the layer count check
    (None, "text_kernel_sizes", [True, 3, 4], "a list of integers"),
    (None, "text_kernel_sizes", 3, "a list of integers"),
    (None, "dim", "16", "an integer"),
    (None, "dim", 16.0, "an integer"),
    (None, "freeze_backbone", 0, "true or false"),
    ("backbone", "dropout", True, "a number"),
    (None, "fusion", None, "a string"),
    (None, "text_encoder", 5, "a string or null"),
    (None, "backbone", [], "an object"),
])
def test_a_config_value_of_another_json_type_is_refused_naming_the_file_the_key_and_the_json_type(
        tiny_bert_dir, tmp_path, section, key, value, expected):
    """config.json is JSON: the refusal says the types (a list, true or false, null) and the value as JSON
    writes them, not Python's tuple, bool, True or None."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    (config[section] if section else config)[key] = value
    config_path.write_text(json.dumps(config))
    where = f"config {section}" if section else "config"
    with pytest.raises(ValueError, match="^" + re.escape(f"checkpoint file '{config_path}' does not describe a model: "
                                                         f"{where} key '{key}' must be {expected}, got "
                                                         f"{json.dumps(value)}") + "$"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("content, given", [("[]", "a list"), ("null", "null"), ('"model"', '"model"')])
def test_a_config_json_that_is_no_object_is_refused_in_json_terms(tiny_bert_dir, tmp_path, content, given):
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config_path.write_text(content)
    with pytest.raises(ValueError, match="^" + re.escape(f"checkpoint file '{config_path}' does not describe a model: "
                                                         f"config must be an object of keys and values, got {given}")
                       + "$"):
        load_tgfr_model(checkpoint)


@pytest.mark.parametrize("sizes", [None, 3, (2, "3"), (2, True)])
def test_text_kernel_sizes_that_are_no_list_of_integers_are_refused_naming_the_setting(sizes):
    """Given in Python, not through config.json (whose types are checked first): the check of their values failed
    with "'int' object is not iterable" or "'<' not supported", raised while writing its own message."""
    with pytest.raises(TypeError, match=f"^text_kernel_sizes must be a list of integers, got "
                                        f"{re.escape(repr(sizes))}$"):
        TGFRConfig(text_kernel_sizes=sizes)


@pytest.mark.parametrize("sizes", [[], [3, 0], [2, -1]])
def test_text_kernel_sizes_below_one_are_refused_naming_the_config_key_and_file(tiny_bert_dir, tmp_path, sizes):
    """The text head's own refusal named its argument, kernel_sizes, which config.json does not have."""
    checkpoint = save_tgfr_model(build(tiny_bert_dir), tmp_path / "checkpoint")
    config_path = checkpoint / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "text_kernel_sizes": sizes}))
    with pytest.raises(ValueError, match="^" + re.escape(f"checkpoint file '{config_path}' does not describe a model: "
                                                         f"text_kernel_sizes must be a non-empty list of positive "
                                                         f"sizes, got {sizes}") + "$"):
        load_tgfr_model(checkpoint)


def test_a_checkpoint_whose_tokenizer_outgrew_the_text_model_is_refused_naming_the_text_model_folder(
        tiny_bert_dir, tmp_path):
    """Tokens added to text_encoder/'s tokenizer (or another model's tokenizer files put there) without the
    embedding rows for them: the model loaded and failed at the first caption that held one."""
    model = build(tiny_bert_dir)
    rows = model.text_encoder.model.get_input_embeddings().num_embeddings
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    text_dir = checkpoint / "text_encoder"
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_tokens(["freckles"])
    tokenizer.save_pretrained(text_dir)
    with pytest.raises(TextModelFilesError, match="^" + re.escape(f"tokenizer in {text_dir} has {rows + 1} tokens, "
                                                                  f"more than the {rows} rows of the text model's "
                                                                  "token embeddings")):
        load_tgfr_model(checkpoint)


def test_an_empty_path_is_refused_and_the_current_folder_left_alone(tiny_bert_dir, tmp_path, monkeypatch):
    """As a Path, "" is ".": save_tgfr_model(model, "") replaced the current folder's config.json, and the loaders
    read whatever the current folder held."""
    model = build(tiny_bert_dir)
    save_tgfr_model(model, tmp_path)  # the current folder holds a checkpoint, which load_tgfr_model("") took
    safetensors.torch.save_file({"w": torch.ones(1)}, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text('{"mine": 1}')
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^directory is empty: name the checkpoint folder to write$"):
        save_tgfr_model(model, "")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*before, "text_encoder"])
    with pytest.raises(ValueError, match=r"^directory is empty: name the checkpoint folder to read$"):
        load_tgfr_model("")
    with pytest.raises(ValueError, match=r"^path is empty: name the weights file to read$"):
        load_weights_file("")


def test_a_float64_model_round_trips_in_float64_without_rounding_its_weights(tiny_bert_dir, tmp_path):
    """The file holds F64 tensors; a model built in float32 and loaded from it kept about 7 of their 16 digits."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():  # values float32 cannot hold, as float64 training gives
            parameter.add_(1e-9 * torch.randn_like(parameter))
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    loaded = load_tgfr_model(checkpoint)
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float64}
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for name, tensor in saved_state.items():
        assert loaded_state[name].dtype == tensor.dtype and torch.equal(loaded_state[name], tensor), name
    images, batch = torch.randn(2, 3, 32, 32, dtype=torch.float64), model.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(loaded(images, **batch), model(images, **batch))


def test_a_model_whose_floating_weights_are_not_all_float64_loads_in_the_default_dtype(tiny_bert_dir, tmp_path):
    """Only a file of float64 weights alone loads in float64: a float64 backbone beside a float32 rest is not a
    float64 model (and float32 holds the float32 weights exactly)."""
    model = build(tiny_bert_dir)
    model.backbone.double()
    loaded = load_tgfr_model(save_tgfr_model(model, tmp_path / "checkpoint"))
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float32}


def test_a_checkpoint_loads_in_a_float64_default_dtype(tiny_bert_dir, tmp_path):
    """Under torch.set_default_dtype(torch.float64) the loaded model is float64 throughout, text model included
    (a float32 text model beside float64 heads failed the first forward)."""
    torch.manual_seed(0)
    model = build(tiny_bert_dir).eval()
    checkpoint = save_tgfr_model(model, tmp_path / "checkpoint")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loaded = load_tgfr_model(checkpoint)
    finally:
        torch.set_default_dtype(previous)
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float64}
    images, batch = torch.randn(2, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        fused = loaded(images.double(), **batch)
        torch.testing.assert_close(fused, model.double()(images.double(), **batch), rtol=0, atol=0)
