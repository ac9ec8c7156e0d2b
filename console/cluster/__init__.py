"""More than one machine: Ray places trials on nodes, each node's own Docker engine runs them.

`node` is what runs on a node (the node agent, the trial actor, the node's dead-man's switch);
`placement` is the driver's side (ClusterPlacement for `redline run --cluster`). Ray is an optional
extra (`redline[cluster]`): nothing here imports it at module level.
"""
