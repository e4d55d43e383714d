"""The web dashboard: the cluster, its queues, its history and its dead letters in a
browser, served by ``bananas-prefork dashboard`` or by a master on ``dashboard_port``.

``app.py`` is the WSGI application (routes and pages), ``pages.py`` what each page
reads from Redis, ``web.py`` requests, responses and the security guards,
``server.py`` the threaded server; ``templates/`` and ``static/`` ship with it.
"""
