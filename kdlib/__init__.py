"""kdlib: a runnable companion to GKD, SWITCH and AdaSwitch (knowledge distillation of LLMs)."""

__version__ = "0.1.0"
