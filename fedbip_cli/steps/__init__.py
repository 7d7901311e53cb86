"""The steps of a round as library functions on a workspace's files; the CLI, simulate and Flower call these.

- `site`: what a site runs for its client (initial, finetune, taskvec, eval), through the client side (client/);
- `coordinator/`: the coordinator's steps, one module each (inputs, grams, similarity, aggregate, final_round);
- `tap`: TAP's stages at a site (accept, distill);
- `status`: a round's state as either party sees it; `transport`: pack / unpack of what crosses between them;
- `export`, `predict`: deployment of an adapter; `cards`: the facts of its model card.
"""
