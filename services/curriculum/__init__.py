"""The built-in verifiable-instruction curriculum: deterministic prompts with IFEval constraints,
gold responses and topics, plus the judge-bootstrap data built from them. Data generation, not
judging: the verifier that checks answers stays in `services.judging`."""
