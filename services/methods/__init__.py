"""The method recipes: per method a config dataclass, the stages a round of it runs, and the hooks
that make the method's data (see base.py). Importing the package registers the built-in recipes."""
from services.methods.base import DataCheck, Recipe, Stage, get_recipe, parse_config, parse_stored_config, register  # noqa: F401
from services.methods import registry  # noqa: E402,F401
