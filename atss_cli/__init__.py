"""atss: train, evaluate and benchmark the ATSS detector, with the label assignment in C++/CUDA.

Importing this package is cheap: torch and the extension load only inside the modules that need them.
`from atss_cli import Detector` (atss_cli/api.py, code in atss_cli/inference/) loads the API on first use; it needs torch only
for checkpoints, not for an exported ONNX file.
"""

__version__ = "0.1.0"
__all__ = ["Detector", "Detections"]


def __getattr__(name: str):
    # Lazy, so that `import atss_cli` (every CLI command) does not pay for numpy and the API.
    if name in ("Detector", "Detections"):
        from atss_cli.inference import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'atss_cli' has no attribute {name!r}")
