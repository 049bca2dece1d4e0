"""Load-balancing pickers compatible with APISIX (apisix/balancer*.lua, lua-resty-balancer).

Pure code: no I/O, no event loop; randomness (``random.Random``) and the clock (in
``BalancerState``) are passed in. Per request the caller does::

    ctx = PickContext(hash_key=hash_key_for(...))      # hash_key only for chash
    picker = cache.get_or_create(key, version, lambda: create_picker(...))
    server = picker.pick(ctx)                           # None -> 502
    ... attempt ...
    picker.after_balance(server, ctx, failed=..., latency=...)
    # on a retryable failure, pick again (at most default_retries(n) / upstream.retries times)

Keep the picker and the context of the first pick for every retry of a request (APISIX
``ctx.server_picker``), even if the cache has a newer version by then.
"""

from tollway.balancer.cache import DEFAULT_PICKER_CACHE_SIZE, PickerCache
from tollway.balancer.chash import ChashPicker, ChashRing
from tollway.balancer.ewma import EwmaPicker
from tollway.balancer.factory import (
    BALANCER_TYPES,
    create_picker,
    servers_from_nodes,
    servers_from_upstream,
)
from tollway.balancer.hash_key import hash_key_for, resolve_vars
from tollway.balancer.least_conn import LeastConnPicker, LeastConnTable
from tollway.balancer.picker import (
    HealthCheck,
    HealthGate,
    NoServerPicker,
    PickContext,
    Picker,
    Server,
    SingleNodePicker,
    default_retries,
)
from tollway.balancer.priority import PriorityPicker
from tollway.balancer.roundrobin import RoundRobinPicker
from tollway.balancer.state import BalancerState

__all__ = [
    "BALANCER_TYPES",
    "DEFAULT_PICKER_CACHE_SIZE",
    "BalancerState",
    "ChashPicker",
    "ChashRing",
    "EwmaPicker",
    "HealthCheck",
    "HealthGate",
    "LeastConnPicker",
    "LeastConnTable",
    "NoServerPicker",
    "PickContext",
    "Picker",
    "PickerCache",
    "PriorityPicker",
    "RoundRobinPicker",
    "Server",
    "SingleNodePicker",
    "create_picker",
    "default_retries",
    "hash_key_for",
    "resolve_vars",
    "servers_from_nodes",
    "servers_from_upstream",
]
