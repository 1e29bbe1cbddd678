"""The detector as an ONNX file, and the torch-free code that runs one.

    atss_cli.export.onnx_export   export_onnx(checkpoint, out, ...): the model and its whole
                                  post-processing in one ONNX graph (needs torch)
    atss_cli.export.postprocess   the post-processing as standard ONNX nodes (needs onnx only)
    atss_cli.export.runtime       OnnxDetector: resize, pad, run with onnxruntime, read the
                                  metadata; imports numpy, cv2 and onnxruntime only, so it runs
                                  where torch is not installed (copy the file alone if you like)

Importing this package imports none of them.
"""
