"""Docker engine access: containment spec, sandbox interface and its Docker implementation, kill switch, host view (cgroups, freezer), guest view (gVisor's processes), images, self-test."""
