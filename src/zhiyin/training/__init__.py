"""zhiyin train: LoRA fine-tuning (trainer.py), its loss (loss.py), data (data.py) and adapters (lora.py)."""
