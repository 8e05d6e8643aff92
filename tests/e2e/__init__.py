"""End-to-end tests: a real twistd process serving the simulated lab, driven over HTTP."""
