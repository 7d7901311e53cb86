"""fedbip on Flower: the same federation run by Flower's Message API instead of files and cron.

Nothing here computes anything of its own. The server side (`strategy`, `server`) writes the task
vectors it receives into a coordinator workspace and calls `fedbip_cli.steps.coordinator.similarity` and
`aggregate`, so every round leaves the same files as the file pipeline (deltas, similarity, weights,
manifest, adapters) and `fedbip verify` / `fedbip aggregate` work on them. The client side
(`client`) calls `fedbip_cli.steps.site.finetune`, `taskvec` and `evaluate` on the site's own workspace.
Adapters and task vectors travel as ArrayRecords (`records`).

Names: `server` and `client` are Flower's (its ServerApp and ClientApp, the module paths
`fedbip_cli.flower.server:app` and `fedbip_cli.flower.client:app` that Flower apps name); inside them
fedbip's words hold: the ServerApp is the coordinator, and a SuperNode is a site (`site=` in its node
config), whose name is its client's name in fedbip.yaml.

Needs the optional extra: ``pip install 'fedbip[flower]'``. Importing this package does not import
flwr; its submodules do.
"""
