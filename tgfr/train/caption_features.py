"""Caption features for training and evaluation, with a cache when the text encoder is frozen.

A frozen text encoder maps a caption to the same features every time, so each distinct caption
is encoded once and kept (float16, valid words only). On CPU this removes the text encoder
from all but the first epoch, its largest cost. A trainable encoder runs on every batch.
"""

import torch

from tgfr.models import TextEncoder, TextFeatures
from tgfr.word_mask import valid_word_mask


class CaptionFeatures:
    """captions (list of B strings) -> TextFeatures (words (B, T, H), lengths, mask, sentence) on `device`."""

    def __init__(self, encoder: TextEncoder, device: torch.device, chunk: int = 256):
        self.encoder, self.device, self.chunk = encoder, device, chunk
        self.num_words = encoder.max_length - 2
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def cached(self) -> bool:
        return self.encoder.frozen

    def _encode(self, captions: list[str]) -> TextFeatures:
        batch = {name: value.to(self.device) for name, value in self.encoder.tokenize(captions).items()}
        return self.encoder(**batch)

    def _fill(self, captions: list[str]) -> None:
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        for start in range(0, len(missing), self.chunk):
            part = missing[start:start + self.chunk]
            with torch.no_grad():
                features = self._encode(part)
            for i, caption in enumerate(part):
                length = int(features.lengths[i])
                self.cache[caption] = (features.words[i, :length].to("cpu", torch.float16),
                                       features.sentence[i].to("cpu", torch.float16))

    def __call__(self, captions: list[str]) -> TextFeatures:
        if not self.cached:
            return self._encode(captions)
        self._fill(captions)
        entries = [self.cache[c] for c in captions]
        lengths = torch.tensor([words.shape[0] for words, _ in entries], dtype=torch.int64)
        words = torch.zeros(len(captions), self.num_words, entries[0][0].shape[1])
        for i, (caption_words, _) in enumerate(entries):
            words[i, :caption_words.shape[0]] = caption_words.float()
        sentence = torch.stack([s.float() for _, s in entries])
        mask = valid_word_mask(lengths, self.num_words)
        return TextFeatures(words.to(self.device), lengths.to(self.device), mask.to(self.device),
                            sentence.to(self.device))
