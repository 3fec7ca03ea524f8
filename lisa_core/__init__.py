"""lisa_core: the LISA reasoning-segmentation model and its inference engine (no ROS)."""
from .checkpoint import CheckpointError
from .engine import ImageState, Lisa, LisaResult, Session
from .preprocess import ImageError
from .quantize import QuantizationError

__all__ = ["CheckpointError", "ImageError", "ImageState", "Lisa", "LisaResult", "QuantizationError", "Session"]
