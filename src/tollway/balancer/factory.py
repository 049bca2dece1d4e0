"""Builds the picker of one upstream version (APISIX ``create_server_picker``)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from tollway.balancer.chash import ChashPicker
from tollway.balancer.ewma import EwmaPicker
from tollway.balancer.least_conn import LeastConnPicker
from tollway.balancer.picker import (
    HealthCheck,
    HealthGate,
    NoServerPicker,
    Picker,
    Server,
    SingleNodePicker,
)
from tollway.balancer.priority import PriorityPicker
from tollway.balancer.roundrobin import RoundRobinPicker
from tollway.balancer.state import BalancerState
from tollway.model import Node, Upstream

log = logging.getLogger("tollway.upstream")

BALANCER_TYPES = ("roundrobin", "chash", "least_conn", "ewma")

# A node without a port (apisix/upstream.lua scheme_to_port; others default to 80).
_DEFAULT_PORTS = {"http": 80, "grpc": 80, "https": 443, "grpcs": 443}


def create_picker(
    upstream_type: str,
    servers: Sequence[Server],
    *,
    resource_key: str,
    is_healthy: HealthCheck | None = None,
    state: BalancerState | None = None,
    rng: random.Random | None = None,
) -> Picker:
    """The picker for ``servers`` (config order) of one upstream version.

    * An unknown ``upstream_type`` uses roundrobin. (APISIX accepts any type in the Admin API
      and fails at request time when ``apisix.balancer.<type>`` does not exist; Tollway keeps
      serving and logs at debug level.)
    * One server and type != least_conn: it is returned directly (APISIX).
    * Several distinct priorities: a ``PriorityPicker`` over one picker per level.
    * ``is_healthy`` is consulted at pick time (see ``HealthGate``); None = all healthy.
    * ``state`` must be the process-wide ``BalancerState`` for least_conn counts and EWMA
      values to survive rebuilds; without it the picker gets a private one.
    * ``resource_key`` names the upstream (APISIX ``upstream_key``), for least_conn state.
    """
    if not servers:
        return NoServerPicker()
    if upstream_type not in BALANCER_TYPES:
        log.debug("unknown balancer type %r for %s, using roundrobin", upstream_type, resource_key)
        upstream_type = "roundrobin"
    if len(servers) == 1 and upstream_type != "least_conn":
        return SingleNodePicker(servers[0])
    state = state if state is not None else BalancerState()
    rng = rng if rng is not None else random.Random()
    gate = HealthGate(servers, is_healthy)
    # APISIX keys each level by "host:port" (transform_node): a repeated addr is one node,
    # the last weight wins, the first position stays.
    levels: dict[int, dict[str, Server]] = {}
    for server in servers:
        levels.setdefault(server.priority, {})[server.addr] = server
    built: list[tuple[int, Picker]] = []
    for priority in sorted(levels, reverse=True):
        level = list(levels[priority].values())
        state_key = f"{resource_key}#{priority}"
        built.append((priority, _level_picker(upstream_type, level, gate, state, rng, state_key)))
    if len(built) == 1:
        return built[0][1]
    return PriorityPicker(built)


def _level_picker(
    upstream_type: str,
    servers: Sequence[Server],
    gate: HealthGate,
    state: BalancerState,
    rng: random.Random,
    state_key: str,
) -> Picker:
    if upstream_type == "chash":
        return ChashPicker(servers, gate)
    if upstream_type == "least_conn":
        return LeastConnPicker(servers, gate, state.least_conn_table(state_key))
    if upstream_type == "ewma":
        return EwmaPicker(servers, gate, state, rng)
    return RoundRobinPicker(servers, gate, rng)


def servers_from_nodes(nodes: Sequence[Node], scheme: str = "http") -> list[Server]:
    """Config nodes to servers; a missing port is the scheme's default."""
    default_port = _DEFAULT_PORTS.get(scheme, 80)
    return [
        Server(
            host=node.host,
            port=node.port if node.port is not None else default_port,
            weight=node.weight,
            priority=node.priority,
        )
        for node in nodes
    ]


def servers_from_upstream(upstream: Upstream) -> list[Server]:
    return servers_from_nodes(upstream.node_list(), upstream.scheme)
