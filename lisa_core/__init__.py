"""lisa_core: the LISA reasoning-segmentation model and its inference engine (no ROS)."""
from .adapters import AdapterError
from .checkpoint import CheckpointError
from .engine import ImageState, Lisa, LisaResult, Session, StaleSessionError
from .preprocess import ImageError
from .quantize import QuantizationError

__all__ = ["AdapterError", "CheckpointError", "ImageError", "ImageState", "Lisa", "LisaResult", "QuantizationError",
           "Session", "StaleSessionError"]
