"""The public Python API, as the README shows it: `from atss_cli import Detector`.

The code lives in atss_cli/inference/ (detector.py: `Detector` and its input conversion;
onnx_runtime.py: `Detections` and the torch-free ONNX Runtime side); this module names what
is public and keeps `atss_cli.api` importable.
"""

from atss_cli.inference.detector import Detections, Detector, ImageInput, to_bgr

__all__ = ["Detector", "Detections", "ImageInput", "to_bgr"]
