"""The documented home of the torch-free ONNX runtime: `from atss_cli.export.runtime import
OnnxDetector, Detections`. The code lives in atss_cli/inference/onnx_runtime.py, beside the
PyTorch detector it mirrors; this name stays so that scripts written against it keep working."""

from atss_cli.inference.onnx_runtime import *  # noqa: F401,F403
from atss_cli.inference.onnx_runtime import __all__  # noqa: F401
