"""Training stages: the VQ-VAE-2 autoencoder (``autoencoder``), the latent flow (``flow``) and
the checkpoint files both write (``checkpoints``).

The submodules are not imported here, so importing one stage does not load the other's
dependencies (FrEIA for the flow).
"""
