"""One training forward of LISA on a ``collate.prepare_batch`` batch: the LLM over every conversation (image features
spliced in, right-padded), next-token CE on the answers, and one mask per ``[SEG]`` from the hidden state of the
token before it — the same position rule and mask decoder the inference engine uses."""
from __future__ import annotations

import torch

from lisa_core.model import LisaForCausalLM
from lisa_core.prompt import seg_hidden_positions, token_end_positions

from .collate import IGNORE_INDEX
from .losses import LossWeights, lisa_loss, next_token_ce


def expand_labels(labels: list[int], ids: list[int], n_patches: int) -> list[int]:
    """Labels per expanded position: the image placeholder's positions are never supervised."""
    out = []
    for token, label in zip(ids, labels):
        out += [IGNORE_INDEX] * n_patches if token < 0 else [label]
    return out


def forward_batch(model: LisaForCausalLM, batch: dict, seg_token_id: int) -> dict:
    """A ``collate.prepare_batch`` batch → ``{"ce": CE, "logits": [B, L, V], "labels": [B, L] (-100: not
    supervised), "pred_masks": [per image ``[n, H, W]`` logits]}``."""
    device = model.model.embed_tokens.weight.device
    features = model.encode_clip(batch["clip_pixels"].to(device))  # [n_images, patches, hidden]
    n_images = len(batch["image_sizes"])
    owner = [i for i in range(n_images) for _ in range(batch["offset"][i], batch["offset"][i + 1])]
    embeds, labels, ends = [], [], []
    for ids, target, image_index in zip(batch["input_ids"], batch["labels"], owner):
        n_patches = features[image_index].shape[0]
        embeds.append(model.embed_ids(torch.tensor(ids, device=device), features[image_index])[0])
        labels.append(torch.tensor(expand_labels(target, ids, n_patches), device=device))
        ends.append(token_end_positions(ids, n_patches))
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(e), dtype=torch.long) for e in embeds], True).to(device)
    hidden = model.model(inputs_embeds=torch.nn.utils.rnn.pad_sequence(embeds, True), attention_mask=mask,
                         use_cache=False).last_hidden_state
    logits = model.lm_head(hidden)
    labels = torch.nn.utils.rnn.pad_sequence(labels, True, IGNORE_INDEX)
    ce = next_token_ce(logits, labels)
    seg_states = [[] for _ in range(n_images)]
    for row, (ids, image_index) in enumerate(zip(batch["input_ids"], owner)):
        positions = [ends[row][p] for p in seg_hidden_positions(ids, seg_token_id)]
        seg_states[image_index].append(hidden[row, positions])
    pred_masks = []
    for i, states in enumerate(seg_states):
        states = torch.cat(states)
        if states.shape[0] == 0:  # e.g. an explanation-only answer: nothing to decode
            pred_masks.append(hidden.new_zeros((0, *batch["image_sizes"][i]), dtype=torch.float32))
            continue
        if batch["sam_pixels"][i] is None:
            raise ValueError(f"{states.shape[0]} [SEG] in the answers of image {i}, which has no target masks")
        embedding = model.encode_sam(batch["sam_pixels"][i].to(device))
        masks, _ = model.decode_masks(embedding, model.seg_prompts(states), batch["input_sizes"][i],
                                      batch["image_sizes"][i])
        pred_masks.append(masks)
    return {"ce": ce, "logits": logits, "labels": labels, "pred_masks": pred_masks}


def batch_loss(model, batch: dict, seg_token_id: int, weights: LossWeights = LossWeights()) -> dict:
    out = forward_batch(model, batch, seg_token_id)
    gt = [m.to(out["pred_masks"][0].device) for m in batch["masks"]]
    return lisa_loss(out["ce"], out["pred_masks"], gt, weights)
