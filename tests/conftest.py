import fcntl
import json
import os
import threading
import types

# No test may reach a model hub. huggingface_hub reads these once, when first imported (by transformers below):
# set later, they reached only child processes, and a load by hub name tried the network for half a minute.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizer,
)

import tgfr.folder_lock as folder_lock_module


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def threads_seen_by(monkeypatch):
    """threads_seen_by(module, name, call) -> the torch CPU thread counts `module.name` saw when call()
    reached it (which stops the work there), the caller holding 2 threads; asserts that the caller has
    its 2 threads again afterwards."""
    def run(module, name, call):
        seen = []

        def stop(*args, **kwargs):
            seen.append(torch.get_num_threads())
            raise ValueError("stop here")

        monkeypatch.setattr(module, name, stop)
        callers = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            with pytest.raises(ValueError, match="stop here"):
                call()
            assert torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(callers)
        return seen
    return run


@pytest.fixture
def lock_taken_elsewhere():
    """lock_taken_elsewhere(folder): whether a holder other than the caller has `folder`'s tgfr.folder_lock (a
    second open file description conflicts with it, as another process's does)."""
    def taken(folder) -> bool:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)
    return taken


@pytest.fixture
def folder_held_elsewhere():
    """folder_held_elsewhere(folder): takes `folder`'s tgfr.folder_lock as another process would (a second
    open file description conflicts with it, as another process's does) until release() or the test's end;
    returns release."""
    descriptors = []

    def release():
        while descriptors:
            os.close(descriptors.pop())

    def hold(folder):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        descriptors.append(descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return release

    yield hold
    release()


@pytest.fixture
def calls_after_release(folder_held_elsewhere, monkeypatch):
    """calls_after_release(folder, module, name, action): runs action() while another process (as
    folder_held_elsewhere) holds `folder`, letting go of it a moment after action starts waiting for the
    folder (however long action takes to get there: a fixed delay failed on a busy machine); returns, for
    each call of `module.name` made meanwhile, whether the folder had been let go by then."""
    def run(folder, module, name, action):
        release = folder_held_elsewhere(folder)
        released = threading.Event()

        def let_go():
            if not released.is_set():
                released.set()
                release()

        def flock(descriptor, operation):
            if not operation & fcntl.LOCK_NB:  # action now waits for the folder
                threading.Timer(0.2, let_go).start()
            return fcntl.flock(descriptor, operation)

        monkeypatch.setattr(folder_lock_module, "fcntl",
                            types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))
        function = getattr(module, name)
        seen = []

        def recording(*arguments, **options):
            seen.append(released.is_set())
            return function(*arguments, **options)

        monkeypatch.setattr(module, name, recording)
        try:
            action()
        finally:
            let_go()
        return seen
    return run


# Tiny randomly-initialized transformers models saved to disk, so loading by path is tested offline.

WORDS = ["a", "man", "woman", "with", "young", "old", "blond", "black", "hair", "beard", "smiling", "glasses"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(vocab_file))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_half_bert_dir(tiny_bert_dir, tmp_path_factory):
    """tiny_bert_dir saved in float16: its config.json names "dtype": "float16"."""
    directory = tmp_path_factory.mktemp("tiny_half_bert")
    BertModel.from_pretrained(tiny_bert_dir).half().save_pretrained(directory)
    BertTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["dtype"] == "float16"
    return directory


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory):
    """A RoBERTa with 20 position embeddings, numbered from padding_idx + 1 = 2 (so 18 usable) and a
    byte-level tokenizer without merges (one token per byte)."""
    directory = tmp_path_factory.mktemp("tiny_roberta")
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    printable = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["\u0120"]  # byte-level BPE's space
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(special + printable)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=20, pad_token_id=1)
    RobertaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _write_clip_tokenizer(directory) -> CLIPTokenizer:
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = list(letters) + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def _tiny_clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=64, eos_token_id=eos, pad_token_id=eos,
                          bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"))


@pytest.fixture(scope="session")
def tiny_clip_text_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_clip_text")
    tokenizer = _write_clip_tokenizer(directory)
    CLIPTextModel(_tiny_clip_text_config(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_full_clip_dir(tmp_path_factory):
    """A whole CLIP checkpoint (text and vision towers), as released CLIP models are saved."""
    directory = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = _write_clip_tokenizer(directory)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    config = CLIPConfig(text_config=_tiny_clip_text_config(tokenizer).to_dict(), vision_config=vision.to_dict())
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
