"""MedImageInsight (MII) image encoder: network, strict checkpoint loader, ONNX export.

MedImageInsight's image tower is a DaViT with the structure of timm's
``davit_huge_fl`` (dims 256/512/1024/2048, depths 1/1/9/1, window 12,
channel attention v2, named spatial/channel blocks), followed by a bias-free
2048 -> 1024 projection (``image_projection``, stored as ``(2048, 1024)`` and
applied as ``x @ P``) and L2 normalisation: the 1024-d embedding.

* :mod:`models.mii.network`: the variants, the preprocessing and the torch network.
* :mod:`models.mii.checkpoint`: the strict safetensors loader and the key mapping.
* :mod:`models.mii.export`: the ONNX export (float32 or float16) and the model card.

The finetune and probe recipes are :mod:`models.mii_train`.
"""
