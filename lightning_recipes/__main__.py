"""``python -m lightning_recipes`` runs the ``lightning-recipes`` command."""

from lightning_recipes.cli import main

if __name__ == "__main__":
    main()
