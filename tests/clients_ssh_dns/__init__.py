"""Tests of the SSH and DNS clients against real peers on loopback."""
