"""Clients for the remote systems SlaveAPI talks to, one module each, all asynchronous."""
