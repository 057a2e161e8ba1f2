"""Single-node stages (autoencoders, K-means, embeddings); importing registers each one."""

from pipeline.stages import autoencoder, embed, kmeans  # noqa: F401
