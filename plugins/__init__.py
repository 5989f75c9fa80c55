"""asrhub's built-in plugins (installed as the ``asrhub_plugins`` package).

Each sub-package is one plugin, registered through the ``asrhub`` entry-point group exactly as a
third-party plugin would be.
"""
