"""detkit: two-stage object detection (R-CNN, Fast R-CNN, Faster R-CNN) in PyTorch."""
from detkit.config import Config, load_config
from detkit.errors import DetkitError

__version__ = "0.1.0"
__all__ = ["Config", "DetkitError", "build_model", "load_config", "__version__"]


def __getattr__(name: str):
    """detkit.build_model, imported on first use so that torch-free parts (detkit.deploy) load without PyTorch."""
    if name == "build_model":
        from detkit.modeling.build import build_model

        return build_model
    raise AttributeError(f"module 'detkit' has no attribute {name!r}")
