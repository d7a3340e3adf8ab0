"""Helpers the tests share: a tiny ONNX model, DX files from images, MII checkpoints."""
