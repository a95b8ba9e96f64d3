"""Bridge: the ZeroMQ job server, its client, and the OSC control surface."""
