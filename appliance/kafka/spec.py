"""What the node gives its Kafka listener process to start (picklable), and the layout
of the listener's beat file (appliance/kafka/child.py says how it is used)."""

from __future__ import annotations

import dataclasses

from appliance.kafka.config import KafkaListenerConfig
from appliance.security_config import SecurityConfig

BEAT_S = 0.25
BEAT_FILE = "kafka-listener.beat"


@dataclasses.dataclass(frozen=True)
class ListenerSpec:
    """What the node gives the listener process to start (picklable)."""

    node_id: int
    bind_host: str
    bind_port: int
    advertised_host: str
    advertised_port: int
    front: str  # this node's front endpoint
    security: SecurityConfig
    max_request_bytes: int
    beat_path: str
    supervisor_pid: int
    log_level: str
    kafka: KafkaListenerConfig = dataclasses.field(default_factory=KafkaListenerConfig)  # [kafka]
