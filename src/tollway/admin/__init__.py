"""The Admin API (APISIX 3.x compatible): generic resource CRUD over etcd, validated with the
model and the plugin registry, served once per instance by the supervisor."""
