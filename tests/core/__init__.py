"""Core tests: the web contract, the processor, the store and configuration, without the lab."""
