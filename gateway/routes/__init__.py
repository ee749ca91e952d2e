"""The HTTP surfaces, one module each, as FastAPI routers the app factory includes.

``stream`` serves ``/events`` and ``/api/v1/events/stream`` over one path;
``poll`` the bounded read, under both prefixes; ``ops`` what operators and
the dashboard use; ``docs`` the ReDoc page. What they all need (the app's
state, the credential, the Subscription) comes from ``dependencies``.
"""
