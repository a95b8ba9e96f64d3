"""MSLDM: a per-stem SourceVAE (DAC-style encoder/decoder, Gaussian posterior) and a joint prior over its latents.

vae.py     SourceVAE, its losses and discriminators, DAC-format weight loading
prior.py   LatentPrior (the Prior interface on stem-major latents) and waveform generate / accompany
train.py   VAE training, latent dataset encoding, latent-prior training, model files
"""
