"""The client side: the model-side code a site runs for its client, a pre-trained model with LoRA, its
data, training and evaluation (torch, transformers, peft). One folder per task type under tasks/; the
training loop, the adapter session and model loading are shared. The steps that drive it are
steps/site.py; what is pure numpy (privacy, TAP's gate) is core/site/."""
