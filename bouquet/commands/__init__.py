"""Sub-commands of the ``bouquet`` CLI; each module exposes ``register(app)``."""
