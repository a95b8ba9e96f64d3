"""Stemweave engine: denoisers, priors, samplers and the tasks built on them."""
