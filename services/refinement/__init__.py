"""Refinement service: SPaR's tree search over refinements of a failed response.

`search.py` is pure (plain data and two callables in, a SearchResult out); `tasks.py` is the Celery
task that loads a failed sample, builds `refine` and `judge` on the generation backend and stores
the tree as RefinementNode rows."""
