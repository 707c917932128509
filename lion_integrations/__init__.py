"""Lion (Chen et al. 2023) as a drop-in optimizer for PyTorch, Hugging Face, Lightning and Accelerate."""

from .optimizer import Lion
from .quantization import Lion4bit, Lion8bit

__version__ = "0.1.0"
__all__ = ["Lion", "Lion8bit", "Lion4bit", "__version__"]
