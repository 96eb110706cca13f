"""The hidden reference solution of the drill; the notebook uses it only when LORA_DRILL_SOLUTION=1."""
from solution.lora import LoRALinear

__all__ = ["LoRALinear"]
