"""Judging service: programmatic verifiers (IFEval instructions via lm-evaluation-harness, exact
answers), the Self-Rewarding rubric judge, the SPaR refiner judge and refinement prompts, majority
votes, evaluation aggregates and plots. The built-in curriculum lives in `services.curriculum`.

Everything here except `tasks.py` is pure: plain data in, plain data out."""
