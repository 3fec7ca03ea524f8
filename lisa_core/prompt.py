"""Conversation template (llava_v1) and tokenisation with an image placeholder.

Token ids carry the image as one ``IMAGE_TOKEN_INDEX`` (-200) entry; the model splices the projected CLIP
features in its place. Tokenisation follows the reference's slow-LLaMA semantics: the text is split on
``<image>``, each chunk is tokenised with BOS, and the BOS of every chunk but the first is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"
IM_START = "<im_start>"
IM_END = "<im_end>"
SEG_TOKEN = "[SEG]"
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER, ASSISTANT, TURN_END = "USER", "ASSISTANT", "</s>"


def first_turn_text(question: str, answer: str | None = None, use_im_start_end: bool = True) -> str:
    """The llava_v1 text of a conversation's first turn, which carries the image.

    Without ``answer`` the text ends with ``ASSISTANT:`` (a generation prompt); with it, the turn is closed
    like the reference's teacher-forced validation conversation.
    """
    image = f"{IM_START}{IMAGE_PLACEHOLDER}{IM_END}" if use_im_start_end else IMAGE_PLACEHOLDER
    text = f"{SYSTEM_PROMPT} {USER}: {image}\n{question} {ASSISTANT}:"
    return text if answer is None else f"{text} {answer}{TURN_END}"


def next_turn_text(question: str) -> str:
    """A follow-up user turn; it comes right after the previous reply's ``</s>``."""
    return f"{USER}: {question} {ASSISTANT}:"


def conversation_prefixes(turns, use_im_start_end: bool = True) -> list[tuple[str, str]]:
    """For closed turns ``[(question, answer), …]``: per turn, (text up to its ``ASSISTANT:``, text through its
    ``</s>``). The last ``through`` is the whole conversation as the reference's training collate writes it."""
    text, spans = "", []
    for i, (question, answer) in enumerate(turns):
        prompt = first_turn_text(question, use_im_start_end=use_im_start_end) if i == 0 else next_turn_text(question)
        spans.append((text + prompt, text + prompt + f" {answer}{TURN_END}"))
        text = spans[-1][1]
    return spans


@dataclass(frozen=True)
class PromptTokenizer:
    """A LLaMA tokenizer plus the ids LISA needs. ``hf`` is a transformers tokenizer of the checkpoint."""

    hf: object
    seg_token_id: int
    bos_token_id: int
    eos_token_id: int

    @classmethod
    def from_hf(cls, tokenizer) -> "PromptTokenizer":
        seg_ids = tokenizer(SEG_TOKEN, add_special_tokens=False).input_ids
        if len(seg_ids) != 1:
            raise ValueError(
                f"the tokenizer splits {SEG_TOKEN} into {len(seg_ids)} tokens {seg_ids}; a LISA checkpoint's "
                f"tokenizer must have {SEG_TOKEN} as one added token"
            )
        for token in (IM_START, IM_END):
            ids = tokenizer(token, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"the tokenizer splits {token} into {ids}; it must be one added token")
        return cls(tokenizer, seg_ids[0], tokenizer.bos_token_id, tokenizer.eos_token_id)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``; each ``<image>`` becomes ``IMAGE_TOKEN_INDEX``."""
        chunks = [self.hf(chunk).input_ids for chunk in text.split(IMAGE_PLACEHOLDER)]
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i > 0:
                ids.append(IMAGE_TOKEN_INDEX)
            if chunk and chunk[0] == self.bos_token_id and (i > 0 or not add_bos):
                chunk = chunk[1:]
            ids.extend(chunk)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Reply text: special tokens (BOS/EOS) dropped, ``[SEG]`` kept."""
        return self.hf.decode([i for i in ids if i >= 0], skip_special_tokens=True).strip()


def seg_hidden_positions(ids: Sequence[int], seg_token_id: int, start: int = 1) -> list[int]:
    """Positions whose hidden state becomes a mask prompt: the token *before* each ``[SEG]`` at or after ``start``.

    This is the one place that decides it; inference, evaluation and training all call it.
    """
    return [j - 1 for j in range(max(start, 1), len(ids)) if ids[j] == seg_token_id]


def token_end_positions(ids: Sequence[int], n_patches: int) -> list[int]:
    """For each id, the index of its last position once the image id is expanded to ``n_patches`` positions."""
    ends, position = [], -1
    for i in ids:
        position += n_patches if i == IMAGE_TOKEN_INDEX else 1
        ends.append(position)
    return ends
