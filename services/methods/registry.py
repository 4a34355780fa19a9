"""Method name → recipe."""
from services.methods import spin

RECIPES = {spin.RECIPE.method: spin.RECIPE}
