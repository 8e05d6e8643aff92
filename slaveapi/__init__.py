"""
SlaveAPI: an HTTP service for looking after a fleet of CI build and test machines.

Every request becomes an action that runs in the background and is polled by
its request id; see C{docs/} and the reference documentation of release 1.
"""

__version__ = "2.0.0.dev0"
