"""The method recipes: a config dataclass per method and the stages a round of it runs."""
from services.methods.base import Recipe, Stage, get_recipe, parse_config  # noqa: F401
