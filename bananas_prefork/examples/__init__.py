"""The demo application (``tasks``) and its load generator (``demo``).

``configs/*.toml`` point at ``bananas_prefork.examples.tasks:app``, so every
worker mode can be tried without writing any code::

    bananas-prefork start configs/specialized.toml
    python -m bananas_prefork.examples.demo --rate 50
"""
