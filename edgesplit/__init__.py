"""The `edgesplit` command: runtime commands without the toolchain, everything else with it."""
