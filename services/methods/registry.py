"""The built-in recipes. Importing this module registers each of them (and Self-Rewarding's own
task) in shared.recipes; a further recipe registers itself the same way, with `register`."""
from services.methods import rest_em, self_instruct, self_reward, sft, spar, spin  # noqa: F401

BUILT_IN = tuple(r.method for r in (spin.RECIPE, rest_em.RECIPE, self_reward.RECIPE, spar.RECIPE, sft.RECIPE))
