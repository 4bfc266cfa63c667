"""The subcommands of `surgeon`, one module each (see surgeon.cli)."""
