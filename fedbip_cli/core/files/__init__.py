"""File formats and file plumbing: streaming safetensors, PEFT adapter folders, task vectors and their
metadata, manifests, the Gram cache, content hashes, atomic writes and locks. numpy only."""
