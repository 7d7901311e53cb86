"""Round steps on files: the site's (finetune, taskvec, eval, initial), the coordinator's (similarity,
aggregate) and TAP's client-side stages (accept, distill). The CLI, simulate and Flower call these."""
