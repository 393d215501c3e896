"""Framework integrations: no per-handler boilerplate.

Each request (or Celery task) runs in its own invariantkit context: it continues the incoming
W3C ``traceparent``/``baggage`` (unless OpenTelemetry's own instrumentation already did), binds the
user, and restores everything when it ends, so a user bound without ``with`` never reaches the
next request.

- :mod:`invariantkit.integrations.asgi`: ``InvariantkitMiddleware`` for Starlette and FastAPI
  (``pip install 'invariantkit[fastapi]'``);
- :mod:`invariantkit.integrations.wsgi`: ``InvariantkitMiddleware`` for Flask and any WSGI app
  (``pip install 'invariantkit[flask]'`` for Flask);
- :mod:`invariantkit.integrations.django`: ``InvariantkitMiddleware`` for Django
  (``pip install 'invariantkit[django]'``);
- :mod:`invariantkit.integrations.celery`: ``instrument(celery_app)``
  (``pip install 'invariantkit[celery]'``).

The frameworks are imported only by the module that needs them.
"""

__all__: list[str] = []
