"""Several Tidings nodes on one Redis (or Redis Cluster): delivery and failures across nodes."""
