"""Autodidact's services: gateway (API + conductor), generation, judging, refinement, training,
and the method recipes that chain them."""
