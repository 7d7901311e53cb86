"""fedbip on Flower: the same federation run by Flower's Message API instead of files and cron.

Nothing here computes anything of its own. The server side (`strategy`, `server`) writes the task
vectors it receives into a coordinator workspace and calls `fedbip_cli.steps.coordinator.similarity` and
`aggregate`, so every round leaves the same files as the file pipeline (deltas, similarity, weights,
manifest, adapters) and `fedbip verify` / `fedbip aggregate` work on them. The client side
(`client`) calls `fedbip_cli.steps.site.finetune`, `taskvec` and `evaluate` on the site's own workspace.
Adapters and task vectors travel as ArrayRecords (`records`).

Needs the optional extra: ``pip install 'fedbip[flower]'``. Importing this package does not import
flwr; its submodules do.
"""
