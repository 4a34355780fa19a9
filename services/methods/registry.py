"""Method name → recipe."""
from services.methods import rest_em, self_reward, sft, spar, spin

RECIPES = {r.method: r for r in (spin.RECIPE, rest_em.RECIPE, self_reward.RECIPE, spar.RECIPE, sft.RECIPE)}
