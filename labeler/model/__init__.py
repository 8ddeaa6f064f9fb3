"""The classifier: model artifacts and their metadata, preprocessing (shared with training), the
ONNX Runtime and Keras runtimes, and the Keras layers saved models refer to. May import
``labeler.core``.
"""
