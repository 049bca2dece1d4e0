"""Config sources (etcd, yaml, memory), the validated Store and the on-disk snapshot."""
