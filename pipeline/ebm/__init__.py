"""Pieces of the energy-based objectives that are not objectives themselves: toy densities,
point datasets, the Langevin sampler and replay buffer, exact 2-D quadrature, and plots."""
