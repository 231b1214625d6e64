"""Transformer-XL language models in a model directory of our own.

Hugging Face's ``transfo-xl`` (post-norm, adaptive softmax) was deprecated in
transformers 4.35 and removed in 5.x, so there is no layout to match: the model is saved
as our own config (``model_type: "torchformer-transformer-xl"``, the
``TransformerXLConfig`` fields) and our parameter names in ``model.safetensors``, the
way ``checkpoints/t5.py`` saves the original Transformer; ``load_pretrained`` reads it
back (``task="causal_lm"``).
"""

from __future__ import annotations

from torchformer.checkpoints.own_layout import own_layout_family
from torchformer.models.transformer_xl import TransformerXLConfig, TransformerXLForCausalLM

MODEL_TYPE = "torchformer-transformer-xl"

FAMILY = own_layout_family(MODEL_TYPE, TransformerXLConfig, "causal_lm", TransformerXLForCausalLM)
