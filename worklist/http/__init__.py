"""The node's HTTP side: the JSON API and the web page for radiologists (FastAPI).

- :mod:`worklist.http.app`: ``create_app(settings, session_factory)``, the middleware,
  the exception handlers and the routers;
- :mod:`worklist.http.deps`: what routes depend on (session, caller and role, the study
  in the path) and :func:`~worklist.http.deps.audited`;
- :mod:`worklist.http.schemas`: the public schemas;
- :mod:`worklist.http.readiness`: what ``/readyz`` checks;
- :mod:`worklist.http.routes`: the routes, one module per resource.

This package imports nothing itself, so :mod:`worklist.queries` can use the schemas
without loading FastAPI.
"""
