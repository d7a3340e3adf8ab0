"""Model contract and tooling: preprocessing, model card, ONNX runtime, training recipes.

Modules used by the workers (``preprocess``, ``card``, ``runtime``, ``metrics``)
import no torch; ``train``, ``onnx_export``, ``export``, ``backbones``, ``mii`` and
``probe`` do.
"""
