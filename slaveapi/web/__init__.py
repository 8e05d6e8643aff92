"""The web front: Klein routes, request validation, authentication and JSON answers."""
