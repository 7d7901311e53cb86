"""Pure functions a site applies to its own update or adapters: differential privacy on a task vector,
TAP's margin gate. numpy only."""
