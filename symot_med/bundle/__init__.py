"""MONAI-facing pieces that the bundles under ``bundles/`` instantiate from their JSON configs.

- ``network``: ``TranslationNetwork``, one module that encodes, applies the flow in a fixed
  direction and decodes (B, 1, H, W) slices; ``SymmetricFlow`` for training.
- ``transforms``: dictionary transforms for intensity normalisation and de-normalisation, and
  the NIfTI writer that keeps the input file's header.
- ``data``: bundle root lookup, data lists and in-memory slice and latent data sets.
- ``workflows``: iteration functions and handlers for MONAI's ignite-based engines.
- ``distributed``: all_gather with gradients, so that the MMD covers every rank's samples.
- ``metrics``: volume metrics in native space for the evaluate config.

The submodules are not imported here, so ``symot_med.inference`` can import ``network``
without importing MONAI's engines.
"""
