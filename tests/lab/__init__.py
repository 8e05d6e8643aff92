"""Tests of the simulated fleet (slaveapi.lab)."""
