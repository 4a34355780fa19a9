"""Generation service: sampling backends (local transformers, TGI, OpenAI-compatible servers) behind one protocol; see base.py. tasks.py (the lead) shards prompts and stores Sample rows."""
