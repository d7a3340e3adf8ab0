"""Model contract and tooling: preprocessing, model card, ONNX runtime, training recipes.

Modules used by the workers (``preprocess``, ``card``, ``runtime``, ``metrics``)
import no torch; ``train``, ``export`` and ``backbones`` do.
"""
