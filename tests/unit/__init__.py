"""Unit tests of small pure modules."""
