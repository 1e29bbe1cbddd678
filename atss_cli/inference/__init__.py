"""From a checkpoint or an ONNX file to detections on images.

    checkpoint.py     load_detector(path, ...): any checkpoint (ours or MMDetection's) -> the
                      model in eval mode, with what the file says (classes, scale, fields)
    detector.py       Detector: PyTorch or ONNX Runtime behind one call, inputs of every kind
    onnx_runtime.py   OnnxDetector, Detections: numpy, OpenCV and onnxruntime only (no torch)
    predict.py        the `atss predict` loop: decode, detect, draw, write

Importing this package imports none of them (onnx_runtime must load where torch is absent).
"""
