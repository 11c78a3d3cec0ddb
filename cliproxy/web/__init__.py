"""The web layer: the client API and its upstream relay, the management API, health, metrics, logs
and the request guards. Built on `cliproxy.services` and `cliproxy.core`.
"""
