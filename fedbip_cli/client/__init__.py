"""The client side: a pre-trained model with LoRA, its data, training and evaluation (torch,
transformers, peft). One folder per task type under tasks/; the training loop, the adapter session
and model loading are shared."""
