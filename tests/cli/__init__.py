"""Tests of C{slaveapi-cli}: against a fake server, and through a real one serving the lab."""
