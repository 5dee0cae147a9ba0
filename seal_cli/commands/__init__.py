"""The ``seal`` command groups, one module each; ``seal_cli.main`` assembles them."""
