"""The workspace: fedbip.yaml (validated config and its commented template), the folder layout of
rounds and clients, the label map, and where the base model lives. Imports no torch."""
