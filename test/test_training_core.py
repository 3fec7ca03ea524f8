"""Training pieces: labels like the reference's collate, the loss terms, and a forward/backward that learns."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lisa_core.prompt import conversation_prefixes
from training.collate import IGNORE_INDEX, Sample, collate, encode_conversation, prepare_batch
from training.forward import batch_loss
from training.losses import LossWeights, lisa_loss, mask_bce, mask_dice, next_token_accuracy, next_token_ce


@pytest.mark.parametrize("turns", [
    [("Can you segment the sink in this image?", "Sure, it is [SEG].")],
    [("What is in the room?", "A sink, a table and a chair."), ("Where can I sit?", "You can sit on the chair [SEG].")],
    [("Segment the kettle and the mug.", "Sure, the kettle is [SEG] and the mug is [SEG]."),
     ("Which one is hot?", "The kettle."), ("Thanks!", "You are welcome.")],
])
def test_labels_supervise_the_answers(reference_lisa, turns):
    """On the reference fixture's tokenizer "ASSISTANT: " loses its trailing space to the merge, so the reference's
    count-minus-2 rule also supervises the ':' (id 433) before each answer; the answers and their </s> always."""
    tokenizer = reference_lisa.tokenizer
    ids, labels = encode_conversation(tokenizer, turns)
    assert ids == tokenizer.encode(conversation_prefixes(turns)[-1][1]) and len(labels) == len(ids)
    supervised = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    colon = tokenizer.hf(":", add_special_tokens=False).input_ids[-1]
    expected = sum(([colon] + tokenizer.encode(a, add_bos=False) + [tokenizer.eos_token_id] for _, a in turns), [])
    assert supervised == expected
    assert labels[0] == IGNORE_INDEX and labels[-1] == tokenizer.eos_token_id


def test_teacher_forced_ids_are_the_reference_ids(reference_lisa, reference_cases):
    for case in (c for c in reference_cases if c["mode"] == "teacher_forced"):
        ids, _ = encode_conversation(reference_lisa.tokenizer, [(case["text"], case["answer"])])
        assert ids == case["input_ids"]


def test_collate_truncates_and_offsets(reference_lisa):
    image = np.zeros((8, 8, 3), np.uint8)
    masks = np.zeros((2, 8, 8), np.float32)
    long_question = "where is the sink " * 200
    samples = [Sample(image, [[("a?", "[SEG].")], [(long_question, "[SEG].")]], masks),
               Sample(image, [[("b?", "Sure, [SEG].")]], masks[:1])]
    batch = collate(samples, reference_lisa.tokenizer, max_length=512)
    assert batch["offset"] == [0, 2, 3]
    assert max(len(ids) for ids in batch["input_ids"]) == 512 - 255
    assert [len(i) == len(label) for i, label in zip(batch["input_ids"], batch["labels"])] == [True] * 3


def test_loss_terms_by_hand():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean()
    assert torch.allclose(mask_bce(logits, target), bce.reshape(1))
    p = logits.sigmoid().flatten()
    t = target.flatten()
    dice = 1 - (2 * (p / 1000 * t).sum() + 1e-6) / ((p / 1000).sum() + (t / 1000).sum() + 1e-6)
    assert torch.allclose(mask_dice(logits, target), dice.reshape(1))
    perfect = torch.where(target > 0, 30.0, -30.0)
    assert mask_dice(perfect, target).item() < 1e-3 and mask_bce(perfect, target).item() < 1e-6
    # two images with 1 and 3 masks: every mask weighs the same in the mean
    preds = [logits, logits.repeat(3, 1, 1)]
    gts = [target, torch.stack([target[0], 1 - target[0], target[0]])]
    out = lisa_loss(torch.tensor(1.5), preds, gts, LossWeights())
    per_mask_bce = torch.cat([mask_bce(p, g) for p, g in zip(preds, gts)])
    assert torch.allclose(out["bce"], 2.0 * per_mask_bce.mean(), atol=1e-6)
    assert torch.allclose(out["loss"], 1.5 + out["bce"] + out["dice"])
    with pytest.raises(ValueError, match="differ"):
        lisa_loss(torch.tensor(0.0), [logits], [target[:, :1]])


def test_next_token_ce_shifts():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 2] = 10.0  # position 0 predicts token 2 at position 1
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    assert next_token_ce(logits, labels).item() < 1e-6
    assert next_token_ce(logits, torch.tensor([[IGNORE_INDEX, 3, IGNORE_INDEX]])).item() > 10


def test_next_token_accuracy_counts_supervised_positions_only():
    logits = torch.full((1, 4, 5), -10.0)
    logits[0, 0, 2] = logits[0, 1, 4] = logits[0, 2, 1] = 10.0  # predicts 2, 4, 1 at positions 1, 2, 3
    assert next_token_accuracy(logits, torch.tensor([[IGNORE_INDEX, 2, 3, IGNORE_INDEX]])) == (1, 2)
    assert next_token_accuracy(logits, torch.tensor([[IGNORE_INDEX, 2, 4, 1]])) == (3, 3)


def test_a_few_steps_learn(tiny_ckpt):
    """Forward + backward through the whole network; the loss falls and the masks improve."""
    from lisa_core import Lisa

    lisa = Lisa.from_pretrained(str(tiny_ckpt), device="cpu")
    model = lisa.model.train()
    rng = np.random.default_rng(0)

    def sample():
        image, mask = np.full((48, 64, 3), 40, np.uint8), np.zeros((1, 48, 64), np.float32)
        y, x = rng.integers(0, 28), rng.integers(0, 40)
        image[y:y + 20, x:x + 24], mask[0, y:y + 20, x:x + 24] = 230, 1
        return Sample(image, [[("Where can I wash my hands?", "Sure, it is [SEG].")]], mask)

    trainable = [p for n, p in model.named_parameters() if "vision_tower" not in n and "image_encoder" not in n]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4)
    history = []
    for _ in range(16):
        out = batch_loss(model, model_batch(lisa, [sample(), sample()]), lisa.tokenizer.seg_token_id)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({k: float(v) for k, v in out.items()})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.8 * first["loss"] and last["dice"] < first["dice"] and last["ce"] < first["ce"]


def test_batch_with_an_answer_without_masks(tiny_lisa):
    image = np.full((32, 40, 3), 60, np.uint8)
    with_mask = Sample(image, [[("Where is the sink?", "Sure, it is [SEG].")]], np.ones((1, 32, 40), np.float32))
    text_only = Sample(image, [[("Why is it a kitchen?", "Because there is a sink.")]], np.zeros((0, 32, 40),
                                                                                              np.float32))
    batch = model_batch(tiny_lisa, [with_mask, text_only])
    assert batch["sam_pixels"][0].shape[-1] == tiny_lisa.model.sam.image_encoder.img_size
    assert batch["sam_pixels"][1] is None and batch["image_sizes"] == [(32, 40), (32, 40)]  # SAM skips the 2nd
    with torch.no_grad():
        out = batch_loss(tiny_lisa.model, batch, tiny_lisa.tokenizer.seg_token_id)
    assert all(torch.isfinite(v) for v in out.values()) and out["bce"] > 0


def test_forward_batch_returns_the_language_model_s_logits_beside_the_masks(tiny_lisa):
    """``logits`` are the text head's ``[B, L, V]`` over the whole sequence (what token accuracy is scored on), not
    the last image's mask logits; the CE is theirs."""
    from training.forward import forward_batch
    from training.losses import next_token_ce

    image = np.full((32, 40, 3), 60, np.uint8)
    samples = [Sample(image, [[("Where is the sink?", "Sure, it is [SEG].")]], np.ones((1, 32, 40), np.float32))] * 2
    with torch.no_grad():
        out = forward_batch(tiny_lisa.model, model_batch(tiny_lisa, samples), tiny_lisa.tokenizer.seg_token_id)
    assert out["logits"].shape == (*out["labels"].shape, tiny_lisa.model.lm_head.out_features)
    assert torch.equal(out["ce"], next_token_ce(out["logits"], out["labels"]))
    assert [m.shape for m in out["pred_masks"]] == [(1, 32, 40)] * 2
    assert next_token_accuracy(out["logits"], out["labels"])[1] > 0


def test_sam_image_encoder_gets_gradients_only_when_trained(tiny_lisa):
    """The paper freezes SAM's image encoder: no gradient reaches it. A config listing ``image_encoder`` trains it
    (the embedded model's did not, before this was fixed: the encoder ran under no_grad whatever the config)."""
    image = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    batch = model_batch(tiny_lisa, [Sample(image, [[("Where is the sink?", "Sure, it is [SEG].")]],
                                           np.ones((1, 32, 40), np.float32))])
    encoder = tiny_lisa.model.sam.image_encoder
    weight, was = encoder.patch_embed.proj.weight, encoder.patch_embed.proj.weight.requires_grad
    try:
        for trained in (False, True):
            encoder.requires_grad_(trained)
            tiny_lisa.model.zero_grad(set_to_none=True)
            batch_loss(tiny_lisa.model, batch, tiny_lisa.tokenizer.seg_token_id)["loss"].backward()
            assert (weight.grad is not None and bool(weight.grad.abs().sum() > 0)) == trained
    finally:
        encoder.requires_grad_(was)
        tiny_lisa.model.zero_grad(set_to_none=True)


def test_seg_without_target_masks_is_refused(tiny_lisa):
    image = np.full((32, 40, 3), 60, np.uint8)
    unlabelled = Sample(image, [[("Where is the sink?", "Sure, it is [SEG].")]], np.zeros((0, 32, 40), np.float32))
    with torch.no_grad(), pytest.raises(ValueError, match=r"1 \[SEG\] in the answers of image 0"):
        batch_loss(tiny_lisa.model, model_batch(tiny_lisa, [unlabelled]), tiny_lisa.tokenizer.seg_token_id)


def model_batch(lisa, samples):
    return prepare_batch(samples, lisa.tokenizer, lisa.clip_processor, lisa.model.sam.image_encoder.img_size)
