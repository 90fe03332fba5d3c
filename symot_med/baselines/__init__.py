"""Baselines of the comparison: CycleGAN, UNIT and histogram matching, trained on the same
slices as SyMOT-Flow and translating through the same volume path."""
