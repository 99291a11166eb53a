"""detkit: two-stage object detection (R-CNN, Fast R-CNN, Faster R-CNN) in PyTorch."""
from detkit.config import Config, load_config
from detkit.errors import DetkitError
from detkit.modeling.build import build_model

__version__ = "0.1.0"
__all__ = ["Config", "DetkitError", "build_model", "load_config", "__version__"]
