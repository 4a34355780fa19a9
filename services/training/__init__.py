"""Training: SFT and pairwise (SPIN / DPO) training with LoRA, and response log-probs (pure code; tasks.py is the Celery side)."""
