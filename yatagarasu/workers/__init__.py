"""
Several worker processes on one port (``server.workers`` > 1): the parent's supervisor, the
listening sockets it binds and hands down, and the control channel between parent and workers.
"""
