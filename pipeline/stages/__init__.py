"""Single-node stages (autoencoders, K-means, embeddings), one module each, found by the
registry's discovery."""
