"""Tests of the HTTP-based clients (slaveapi/clients/http.py and the clients built on it)."""
