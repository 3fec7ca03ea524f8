"""``Lisa``: load a checkpoint, chat with KV cache, segment, and keep multi-turn sessions.

One query: CLIP features (once per image) → LLM prefill with the features spliced in → greedy decode with KV cache
→ for each ``[SEG]``, the final-norm hidden state of the token before it → ``text_hidden_fcs`` → SAM mask decoder
on the SAM image embedding (computed once per image, and only when a ``[SEG]`` appears).

LoRA adapters (``lisa-export --adapter-only``) switch on the loaded model: ``load_adapter`` / ``set_adapter`` (see
``adapters.py``). A session belongs to the weights it was opened on: after a switch it raises ``StaleSessionError``
until it is reset.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .checkpoint import DEFAULT_MODEL
from .adapters import AdapterFiles, Adapters
from .model import LisaForCausalLM
from .preprocess import check_image, clip_pixels, load_clip_processor, sam_pixels
from .prompt import (IMAGE_TOKEN_INDEX, PromptTokenizer, first_turn_text, next_turn_text,
                     seg_hidden_positions, token_end_positions)
from .quantize import check_quantization, quantize_linears

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype, device: torch.device | None = None) -> torch.dtype:
    """A torch dtype from its name; ``"auto"``: bfloat16 on CUDA, float32 elsewhere (bf16 is many times slower than
    fp32 on CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LisaResult:
    """One reply. ``masks``/``mask_logits``/``scores`` have one entry per ``[SEG]``, in order."""

    text: str
    token_ids: list[int]
    masks: list[np.ndarray]
    mask_logits: np.ndarray  # float32 [n, H, W]
    scores: list[float]  # SAM's predicted IoU per mask
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    turn: int = 1
    adapter: str | None = None  # the active adapter's name; None: the base model
    # ``[n, 256]`` SAM prompt embeddings of the [SEG] tokens: decoded again on another frame (``Lisa.redecode``),
    # they segment the same target there without the language model
    seg_prompts: torch.Tensor | None = None

    def union_mask(self, shape) -> np.ndarray:
        return np.logical_or.reduce(self.masks) if self.masks else np.zeros(shape, dtype=bool)


@dataclass
class ImageState:
    """An image and its encodings, each computed at most once."""

    image: np.ndarray
    clip_features: torch.Tensor | None = None  # [P, H]
    sam_embedding: torch.Tensor | None = None  # [1, 256, h, w]
    sam_input_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def encoded(self) -> bool:
        return self.clip_features is not None and self.sam_embedding is not None


class Yielded(Exception):
    """An encode stopped between two transformer blocks because other work was waiting."""


@contextmanager
def yield_points(blocks, should_yield: Callable[[], bool]):
    """While active, each of ``blocks`` first asks ``should_yield()`` and raises ``Yielded`` if it says so."""
    def check(module, args):
        if should_yield():
            raise Yielded()

    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Stopwatch:
    def __init__(self):
        self.times: dict[str, float] = {}

    def measure(self, stage: str, when: bool = True):
        """Time a stage (``when`` False: nothing is recorded, e.g. an encoding that is reused)."""
        if not when:
            return nullcontext()
        watch = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                watch.times[stage] = watch.times.get(stage, 0.0) + time.perf_counter() - self.start

        return _Span()


class StaleSessionError(ValueError):
    """A session continued after the model's weights were switched (another adapter): its KV cache is stale."""


class Lisa:
    """The inference engine. Build it with ``Lisa.from_pretrained``."""

    def __init__(self, model: LisaForCausalLM, tokenizer: PromptTokenizer, clip_processor, device: torch.device,
                 name: str = "", quantization: str | None = None, source_dir: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.clip_processor = clip_processor
        self.device = device
        self.name = name
        self.quantization = quantization
        self.source_dir = source_dir
        self._adapters = Adapters(model, device, quantization)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_id: str = DEFAULT_MODEL, vision_tower: str | None = None, device=None, dtype="auto",
                        quantization: str | None = None) -> "Lisa":
        device = torch.device(device) if device is not None else default_device()
        dtype = parse_dtype(dtype, device)
        check_quantization(quantization, device)
        if quantization:
            dtype = torch.float16
        ckpt = ckpt_io.resolve_checkpoint(path_or_id)
        log.info("loading LISA checkpoint %s (%s, %s%s)", ckpt, device, dtype, f", {quantization}" * bool(quantization))
        config = ckpt_io.read_config(ckpt)
        tokenizer = PromptTokenizer.from_hf(ckpt_io.load_tokenizer(ckpt))
        tower_name = ckpt_io.resolve_vision_tower(ckpt, config, vision_tower)
        state = ckpt_io.read_state_dict(ckpt)
        model = ckpt_io.build_model(config, state, dtype)
        del state
        log.info("loading vision tower %s", tower_name)
        model.attach_vision_tower(ckpt_io.load_vision_tower(tower_name, dtype))
        if quantization:
            log.info("quantised %d linear layers to %s", quantize_linears(model, quantization), quantization)
        model.to(device)
        processor = load_clip_processor(tower_name if Path(tower_name).is_dir() else None)
        log.info("LISA ready: %s", ckpt)
        return cls(model, tokenizer, processor, device, str(path_or_id), quantization, ckpt)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write this model in the official LISA layout (weights without CLIP, config, slow tokenizer)."""
        if self.quantization:
            raise ValueError("a quantised model cannot be saved in the official layout; load it unquantised")
        if self.adapters:
            raise ValueError(f"adapters are loaded ({', '.join(self.adapters)}): delete them to save the base model, "
                             "or write a merged checkpoint with lisa-export")
        return ckpt_io.save_checkpoint(self.model, self.source_dir, out_dir)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.embed_tokens.weight.dtype

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    # ---------------------------------------------------------------- adapters
    @property
    def adapters(self) -> dict[str, Path]:
        """The loaded adapters: name → directory."""
        return self._adapters.loaded

    @property
    def active_adapter(self) -> str | None:
        """The active adapter's name; ``None``: the base model."""
        return self._adapters.active

    @property
    def weights_version(self) -> int:
        """Incremented at every adapter switch; sessions opened on another version refuse to continue."""
        return self._adapters.version

    def check_adapter(self, path: str | Path) -> AdapterFiles:
        """Check that the adapter at ``path`` fits this model (files, names, LoRA targets, shapes) without loading
        it; raises ``AdapterError`` saying what does not fit."""
        return self._adapters.check(path)

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load a ``lisa-export --adapter-only`` directory (checked first; on error ``AdapterError`` and the model is
        unchanged) under ``name`` (default: the directory's name, made unique) and return the name. The adapter is
        not active until ``set_adapter(name)``."""
        return self._adapters.load(path, name)

    def set_adapter(self, name: str | None) -> None:
        """Run with adapter ``name`` (loaded before); ``None``: the base model, exactly. Sessions opened before a
        switch must be reset (``StaleSessionError`` otherwise). Not while a turn is running: switch between turns."""
        self._adapters.activate(name)

    def delete_adapter(self, name: str) -> None:
        """Free adapter ``name`` (the base model becomes active if it was); with none left, no peft layers remain."""
        self._adapters.delete(name)

    # ---------------------------------------------------------------- image encodings
    def image_state(self, image: np.ndarray) -> ImageState:
        return ImageState(check_image(image))

    def clip_features(self, state: ImageState) -> torch.Tensor:
        if state.clip_features is None:
            pixels = clip_pixels(self.clip_processor, state.image).to(self.device)
            state.clip_features = self.model.encode_clip(pixels)[0]
        return state.clip_features

    def sam_embedding(self, state: ImageState) -> torch.Tensor:
        if state.sam_embedding is None:
            pixels, state.sam_input_size = sam_pixels(state.image, self.model.sam.image_encoder.img_size)
            state.sam_embedding = self.model.encode_sam(pixels.to(self.device))
        return state.sam_embedding

    @torch.inference_mode()
    def encode(self, state: ImageState, should_yield: Callable[[], bool] = lambda: False) -> bool:
        """Compute ``state``'s CLIP features and SAM embedding ahead of any question (a server's idle time), so a
        query on it starts at the LLM. ``should_yield()`` is asked before every transformer block of both encoders;
        when it says so, the stage running is dropped (finished stages are kept) and False is returned."""
        tower = self.model.model.vision_tower
        clip_layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers < 5 nests vision_model
        blocks = [*clip_layers, *self.model.sam.image_encoder.blocks]
        try:
            with yield_points(blocks, should_yield):
                self.clip_features(state)
                self.sam_embedding(state)
        except Yielded:
            return False
        return True

    # ---------------------------------------------------------------- public API
    def session(self, image: "np.ndarray | ImageState") -> "Session":
        """A multi-turn conversation about ``image`` (RGB, or an ``ImageState`` whose encodings it reuses); it
        reuses the image encodings and the KV cache."""
        return Session(self, image if isinstance(image, ImageState) else self.image_state(image))

    def chat(self, image: np.ndarray, text: str, max_new_tokens: int = 512,
             history: Sequence[tuple[str, str]] | None = None,
             on_token: Callable[[int, str], bool | None] | None = None) -> LisaResult:
        """Answer ``text`` about ``image`` (H×W×3 uint8 RGB) by greedy decoding with KV cache.

        ``history``: earlier (question, answer) turns on this image. ``on_token(id, text_so_far)`` is called for
        each generated token; returning ``False`` stops generation early.
        """
        session = self.session(image)
        for question, answer in history or ():
            session.add_turn(question, answer)
        return session.chat(text, max_new_tokens, on_token)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, text: str, answer: str = "[SEG].") -> LisaResult:
        """The reference's teacher-forced validation: one forward over the closed conversation ``text`` →
        ``answer``, one mask per ``[SEG]`` in it. ``token_ids`` are the conversation's ids (``-200`` = image)."""
        _check_text(text)
        watch = Stopwatch()
        state = self.image_state(image)
        ids = self.tokenizer.encode(first_turn_text(text, answer))
        with watch.measure("clip"):
            features = self.clip_features(state)
        self._check_context(ids, features.shape[0], 0, 0)
        with watch.measure("prefill"):
            embeds = self.model.embed_ids(torch.tensor(ids, device=self.device), features)
            hidden = self.model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
            hidden = hidden[token_end_positions(ids, features.shape[0])]
        positions = seg_hidden_positions(ids, self.tokenizer.seg_token_id)
        logits, scores, prompts = self._masks(state, hidden[positions], watch)
        return _result(answer, ids, logits, scores, watch, adapter=self.active_adapter, prompts=prompts)

    # ---------------------------------------------------------------- internals
    def _check_context(self, ids: Sequence[int], n_patches: int, cached: int, max_new_tokens: int) -> int:
        """Raise if the prompt does not fit the context; return how many new tokens still fit (≤ requested)."""
        length = cached + sum(n_patches if i == IMAGE_TOKEN_INDEX else 1 for i in ids)
        if length >= self.context_length:
            raise ValueError(
                f"prompt is {length} positions long (the image counts {n_patches}), over the model's context "
                f"of {self.context_length}: shorten the query or reset the session"
            )
        return min(max_new_tokens, self.context_length - length)

    def _masks(self, state: ImageState, hidden: torch.Tensor, watch: Stopwatch):
        """``[n, H]`` hidden states → (``[n, H, W]`` float32 logits, ``[n]`` scores, ``[n, 256]`` prompts)."""
        if hidden.shape[0] == 0:
            return torch.zeros((0, *state.size)), torch.zeros(0), None
        with watch.measure("mask_decode"):
            prompts = self.model.seg_prompts(hidden)
        return (*self.redecode(state, prompts, watch), prompts)

    @torch.inference_mode()
    def redecode(self, state: ImageState, prompts: torch.Tensor, watch: Stopwatch | None = None,
                 should_yield: Callable[[], bool] | None = None):
        """``[n, 256]`` [SEG] prompt embeddings (``LisaResult.seg_prompts``) decoded on ``state``'s frame (SAM image
        encoder when it has no embedding yet, then the mask decoder; no language model) → (``[n, H, W]`` float32
        logits, ``[n]`` predicted IoU). ``should_yield()``, when given, is asked before every block of the SAM
        encoder: ``Yielded`` (and no embedding kept) as soon as it says so."""
        watch = watch or Stopwatch()
        blocks = self.model.sam.image_encoder.blocks if should_yield is not None else []
        with watch.measure("sam_encode", when=state.sam_embedding is None), yield_points(blocks, should_yield):
            embedding = self.sam_embedding(state)
        with watch.measure("mask_decode"):
            return self.model.decode_masks(embedding, prompts, state.sam_input_size, state.size)


class Session:
    """A conversation on one image. The KV cache holds every position fed so far; the last generated token (and
    the turn's closing ``</s>``) are fed at the start of the next turn."""

    def __init__(self, lisa: Lisa, state: ImageState):
        self.lisa = lisa
        self.state = state
        self.reset()

    def reset(self, image: np.ndarray | None = None) -> None:
        """Forget the conversation (and switch to ``image`` if given); the image encodings are kept otherwise, unless
        the model's weights were switched since (they are recomputed then). The session then belongs to the
        model's current weights (adapter)."""
        if image is not None:
            self.state = self.lisa.image_state(image)
        elif getattr(self, "weights_version", self.lisa.weights_version) != self.lisa.weights_version:
            self.state = self.lisa.image_state(self.state.image)
        self.weights_version = self.lisa.weights_version
        self.adapter = self.lisa.active_adapter
        self.turns: list[tuple[str, str]] = []
        self.last_result: LisaResult | None = None  # the last turn's answer (what ``follow`` follows)
        self.cache = None
        self.cached_positions = 0
        self.pending: list[int] = []  # ids produced but not yet fed to the LLM

    def add_turn(self, question: str, answer: str) -> None:
        """Append a finished turn without generating (history)."""
        self._check_weights()
        _check_text(question)
        self.pending += self._question_ids(question) + self.lisa.tokenizer.encode(answer, add_bos=False)
        self.pending.append(self.lisa.tokenizer.eos_token_id)
        self.turns.append((question, answer))

    def _check_weights(self) -> None:
        if self.weights_version != self.lisa.weights_version:
            raise StaleSessionError(
                f"this session was opened on {_describe(self.adapter)} and the model has switched to "
                f"{_describe(self.lisa.active_adapter)} since: its KV cache belongs to the old weights; reset the "
                "session or open a new one")

    def _question_ids(self, question: str) -> list[int]:
        encode = self.lisa.tokenizer.encode
        if self.turns:
            return encode(next_turn_text(question), add_bos=False)
        return encode(first_turn_text(question, use_im_start_end=getattr(
            self.lisa.model.config, "mm_use_im_start_end", True)))

    @torch.inference_mode()
    def chat(self, text: str, max_new_tokens: int = 512,
             on_token: Callable[[int, str], bool | None] | None = None) -> LisaResult:
        self._check_weights()
        _check_text(text)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        lisa, watch = self.lisa, Stopwatch()
        carried = len(self.pending)
        fed = self.pending + self._question_ids(text)
        start_positions = self.cached_positions
        try:
            features = None
            if IMAGE_TOKEN_INDEX in fed:
                with watch.measure("clip", when=self.state.clip_features is None):
                    features = lisa.clip_features(self.state)
            n_patches = 0 if features is None else features.shape[0]
            budget = lisa._check_context(fed, n_patches, self.cached_positions, max_new_tokens)
            generated, hidden = self._generate(fed, features, budget, on_token, watch)
        except BaseException:
            self._rollback(start_positions)
            raise
        turn_ids = fed + generated
        positions = seg_hidden_positions(turn_ids, lisa.tokenizer.seg_token_id, start=max(carried, 1))
        logits, scores, prompts = lisa._masks(self.state, hidden[positions], watch)
        eos = lisa.tokenizer.eos_token_id
        self.pending = generated[-1:] + ([eos] if generated[-1] != eos else [])
        reply = lisa.tokenizer.decode(generated)
        self.turns.append((text, reply))
        self.last_result = _result(reply, generated, logits, scores, watch, turn=len(self.turns),
                                   adapter=self.adapter, prompts=prompts)
        return self.last_result

    def follow(self, frames, index: int = 0, config=None):
        """Follow mask ``index`` of the last answer on later camera frames (an iterable of RGB arrays): one
        ``lisa_core.follow.FollowUpdate`` per frame, without the language model."""
        from .follow import FollowConfig, Follower

        if self.last_result is None:
            raise ValueError("nothing to follow: this session has not answered yet")
        follower = Follower(self.lisa, self.last_result, self.state.image, index, config or FollowConfig())
        return (follower.update(frame) for frame in frames)

    def _generate(self, fed: list[int], features, budget: int, on_token, watch: Stopwatch):
        """Prefill ``fed`` then decode greedily. Returns (generated ids, ``[len(fed) + len(gen) - 1, H]`` hidden)."""
        lisa = self.lisa
        model, eos = lisa.model, lisa.tokenizer.eos_token_id
        with watch.measure("prefill"):
            embeds = model.embed_ids(torch.tensor(fed, device=lisa.device), features)
            out = model.model(inputs_embeds=embeds, cache=self.cache, use_cache=True)
            self.cache = out.cache
            self.cached_positions += embeds.shape[1]
            hidden = [out.last_hidden_state[0][token_end_positions(fed, 0 if features is None else features.shape[0])]]
            next_id = int(model.lm_head(hidden[0][-1]).argmax())
        generated: list[int] = []
        with watch.measure("decode"):
            while True:
                generated.append(next_id)
                if on_token is not None and on_token(next_id, lisa.tokenizer.decode(generated)) is False:
                    break
                if next_id == eos or len(generated) >= budget:
                    break
                embeds = model.model.embed_tokens(torch.tensor([[next_id]], device=lisa.device))
                out = model.model(inputs_embeds=embeds, cache=self.cache, use_cache=True)
                self.cached_positions += 1
                hidden.append(out.last_hidden_state[0])
                next_id = int(model.lm_head(out.last_hidden_state[0, -1]).argmax())
        watch.times["decode_tokens"] = float(len(generated))
        return generated, torch.cat(hidden, 0)

    def _rollback(self, positions: int) -> None:
        """Undo a turn that failed or was interrupted, so the session stays usable."""
        if self.cache is not None:
            extra = self.cache.get_seq_length() - positions
            if positions == 0:
                self.cache = None
            elif extra > 0:
                self.cache.crop(-extra)  # transformers 5: a negative count removes that many positions
        self.cached_positions = positions


def _describe(adapter: str | None) -> str:
    return "the base model" if adapter is None else f"adapter '{adapter}'"


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("query text is empty")


def _result(text, ids, logits: torch.Tensor, scores: torch.Tensor, watch: Stopwatch, turn: int = 1,
            adapter: str | None = None, prompts: torch.Tensor | None = None) -> LisaResult:
    logits_np = logits.float().cpu().numpy()
    watch.times["total"] = sum(v for k, v in watch.times.items() if k != "decode_tokens")
    return LisaResult(text=text, token_ids=list(ids), masks=[m > 0 for m in logits_np], mask_logits=logits_np,
                      scores=[float(s) for s in scores], timings=dict(watch.times), turn=turn, adapter=adapter,
                      seg_prompts=prompts)
