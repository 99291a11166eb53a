"""Deployment: ONNX export (detkit.deploy.export, needs PyTorch) and the ONNX Runtime detector (no PyTorch).

Importing this package loads neither torch nor torchvision: ``from detkit.deploy import OnnxDetector``.
"""
from detkit.deploy.runtime import Detections, OnnxDetector

__all__ = ["Detections", "OnnxDetector"]
