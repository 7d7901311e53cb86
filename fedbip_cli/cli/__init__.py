"""The `fedbip` command (typer): `app` builds it, `common` holds the shared options, one-line errors and
exit codes, and one module per group of commands registers them: `site_commands` (what a site runs),
`coordinator_commands` (similarity, aggregate), `ops_commands` (status, verify, pack, unpack),
`deploy_commands` (export, predict), `sim_commands` (simulate, demo). Thin wrappers over the library:
each command imports its step when it runs, so `fedbip --help` loads neither numpy nor torch."""
