"""Pieces of the energy-based objectives that are not objectives themselves: toy densities,
datasets of points and images, the Langevin sampler and replay buffer, 2-D quadrature (log Z
on a box, with the mass outside it measured), inference (scoring, completion) and plots."""
