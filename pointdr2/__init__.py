"""pointdr2: memory-efficient finetuning of pretrained point-cloud networks with Dr2Net."""

__version__ = "0.1.0"
