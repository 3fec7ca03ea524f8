"""Samples → model batches: token ids with the image placeholder, labels that supervise only the answers (and their
``</s>``), padding and truncation as the reference's training collate does."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lisa_core.preprocess import clip_pixels, sam_pixels
from lisa_core.prompt import ASSISTANT, TURN_END, PromptTokenizer, conversation_prefixes

IGNORE_INDEX = -100
ASSISTANT_SEP = f" {ASSISTANT}: "
IMAGE_POSITIONS = 256  # CLIP-L/14 patches the image placeholder expands to; truncation leaves room for them


@dataclass
class Sample:
    """One image with its conversations. ``masks``: ``[n, H, W]`` 0/1, one per ``[SEG]`` over all conversations in
    order; ``ignore``: ``[H, W]`` bool, pixels (ReasonSeg "ignore" regions) left out of evaluation."""

    image: np.ndarray
    conversations: list[list[tuple[str, str]]]
    masks: np.ndarray
    ignore: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)


def encode_conversation(tokenizer: PromptTokenizer, turns, use_im_start_end: bool = True):
    """``[(question, answer), …]`` → (ids, labels), labels as the reference's collate counts them: per round (the
    text up to a ``</s>``) the instruction through ``"ASSISTANT: "`` is masked, its token count taken as that text's
    count minus 2 (BOS and the separator's trailing space), and the cursor moves by the round's own count, whose BOS
    stands in for the ``</s>`` the split removed. So each answer and its ``</s>`` are supervised — and, with a
    tokenizer that merges the trailing space away, the ``:`` before the answer too, exactly as in the reference."""
    conversation = conversation_prefixes(turns, use_im_start_end)[-1][1]
    ids = tokenizer.encode(conversation)
    labels = [IGNORE_INDEX] + list(ids[1:])
    cursor = 1
    for round_text in conversation.split(TURN_END)[:-1]:
        instruction = round_text[: round_text.index(ASSISTANT_SEP) + len(ASSISTANT_SEP)]
        n_instruction = len(tokenizer.encode(instruction)) - 2
        labels[cursor:cursor + n_instruction] = [IGNORE_INDEX] * n_instruction
        cursor += len(tokenizer.encode(round_text))
    labels[cursor:] = [IGNORE_INDEX] * (len(labels) - cursor)
    return ids, labels


def collate(samples: list[Sample], tokenizer: PromptTokenizer, max_length: int = 512,
            use_im_start_end: bool = True) -> dict:
    """A batch: per conversation ``input_ids``/``labels`` (lists, unpadded — the model pads after splicing the
    image in), ``offset`` (conversations of image i are ``offset[i]:offset[i+1]``), images and masks per image.
    Conversations longer than ``max_length - (IMAGE_POSITIONS - 1)`` tokens are cut, as in the reference."""
    keep = max_length - (IMAGE_POSITIONS - 1)
    input_ids, labels, offset = [], [], [0]
    for sample in samples:
        for turns in sample.conversations:
            ids, target = encode_conversation(tokenizer, turns, use_im_start_end)
            input_ids.append(ids[:keep])
            labels.append(target[:keep])
        offset.append(len(input_ids))
    return {
        "images": [s.image for s in samples],
        "input_ids": input_ids,
        "labels": labels,
        "offset": offset,
        "masks": [torch.as_tensor(s.masks, dtype=torch.float32) for s in samples],
        "ignore": [s.ignore for s in samples],
    }


def prepare_batch(samples: list[Sample], tokenizer: PromptTokenizer, clip_processor, sam_size: int,
                  max_length: int = 512, use_im_start_end: bool = True) -> dict:
    """``collate`` plus every image's preprocessing, so a training step only runs the model (and DataLoader
    workers do the rest): ``clip_pixels`` ``[n_images, 3, 224, 224]``; per image ``sam_pixels``
    ``[1, 3, sam_size, sam_size]`` and its resized ``input_size`` (None for an image without target masks: SAM is
    not run on it); ``image_sizes`` (H, W). The raw images are dropped."""
    batch = collate(samples, tokenizer, max_length, use_im_start_end)
    images = batch.pop("images")
    sam = [sam_pixels(image, sam_size) if len(sample.masks) else (None, None)
           for image, sample in zip(images, samples)]
    batch.update(clip_pixels=torch.cat([clip_pixels(clip_processor, image) for image in images]),
                 sam_pixels=[pixels for pixels, _ in sam], input_sizes=[size for _, size in sam],
                 image_sizes=[tuple(image.shape[:2]) for image in images])
    return batch
