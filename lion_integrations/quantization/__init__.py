"""Quantized momentum for Lion: a block-wise codec for the stored state, beside the one rule.

`Lion8bit` and `Lion4bit` are `Lion` with ``exp_avg`` kept as 8- or 4-bit codes plus one absmax per
block; `codec` holds the pure quantize/dequantize functions, `kernel` the fused step.
"""

from .codec import dequantize_blockwise, quantize_blockwise, signed_dynamic_map
from .optim import Lion4bit, Lion8bit, QuantizedLion

__all__ = ["Lion8bit", "Lion4bit", "QuantizedLion", "quantize_blockwise", "dequantize_blockwise", "signed_dynamic_map"]
