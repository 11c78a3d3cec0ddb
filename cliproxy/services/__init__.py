"""Services with state and I/O below the web layer: the failure tracker, the SQLite store and its
migrations, the config loader, manager and write-back. They never import `cliproxy.web`.
"""
