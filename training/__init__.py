"""training: DeepSpeed LoRA fine-tuning of LISA (comes with its own issue)."""
