"""Image classification: image folders or .npz arrays, a ViT-style model with its head, metrics."""
