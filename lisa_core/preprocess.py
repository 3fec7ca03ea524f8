"""Image transforms for the two encoders, input validation, and mask post-processing.

CLIP: short side to 224 with PIL bicubic, centre crop, CLIP mean/std (transformers' PIL image processor, which is
bit-identical to the reference; the torchvision backend is not). SAM: longest side to the encoder's size with PIL
bilinear (``ResizeLongestSide.apply_image``), SAM mean/std, zero padding at the bottom/right.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import CLIPImageProcessorPil

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


MAX_ASPECT_RATIO = 20  # panoramas are 2:1 to 8:1; past this an image is a sliver, and costly to preprocess


class ImageError(ValueError):
    """The image given to the engine is not an H×W×3 uint8 RGB array."""


def check_image(image) -> np.ndarray:
    """Return ``image`` as a contiguous H×W×3 uint8 array, or raise ``ImageError`` saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array (H×W×3 uint8 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must have shape H×W×3 (RGB), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image is empty: shape {image.shape}")
    height, width = image.shape[:2]
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageError(f"image is {width}×{height}: one side is over {MAX_ASPECT_RATIO}× the other (CLIP would "
                         "scale its short side to 224 px — a 1×3840 sliver to 224×860160 — and SAM's to nothing)")
    return np.ascontiguousarray(image)


def load_clip_processor(vision_tower_dir: str | None) -> CLIPImageProcessorPil:
    """The CLIP processor saved with the vision tower, or the openai CLIP-L/14 defaults when there is none."""
    if vision_tower_dir and (Path(vision_tower_dir) / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(vision_tower_dir)
    return CLIPImageProcessorPil()


def clip_pixels(processor: CLIPImageProcessorPil, image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → ``[1, 3, 224, 224]`` float32."""
    # channels_last said, not guessed: transformers takes an H×W×3 image with H of 1 or 3 for channels-first
    return processor(images=image, return_tensors="pt", input_data_format="channels_last")["pixel_values"]


def sam_pixels(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """H×W×3 uint8 → (``[1, 3, img_size, img_size]`` float32, resized (h, w) before padding)."""
    resized = ResizeLongestSide(img_size).apply_image(image)
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1)
    x = (x - mean) / std
    h, w = resized.shape[:2]
    x = F.pad(x, (0, img_size - w, 0, img_size - h))
    return x.unsqueeze(0), (h, w)


def upscale_mask_logits(low_res: torch.Tensor, img_size: int, input_size, original_size) -> torch.Tensor:
    """``[n, 1, h, w]`` decoder logits → ``[n, H, W]`` float32 logits at the original image size.

    Upsample to the padded encoder frame, cut the padding, upsample to the original size (bilinear, as SAM).
    """
    x = F.interpolate(low_res.float(), (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0]
