"""Process groups and communication: grids, p2p, bridge, data parallelism, loss, start-up."""
