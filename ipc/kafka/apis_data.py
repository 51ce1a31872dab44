"""Kafka's data-path APIs as Sluice serves them: ApiVersions, Metadata, Produce, Fetch,
ListOffsets, InitProducerId. Field names, types and version ranges follow Kafka's
message specs; only the versions Sluice serves are described (docs/kafka.md)."""

from __future__ import annotations

from ipc.kafka.schema import Api, arr, f

I32S = arr("int32")

API_VERSIONS = Api(
    18,
    "ApiVersions",
    0,
    3,
    3,
    request=(
        f("client_software_name", "string", "3+"),
        f("client_software_version", "string", "3+"),
    ),
    response=(
        f("error_code", "int16"),
        f("api_keys", (f("api_key", "int16"), f("min_version", "int16"), f("max_version", "int16"))),
        f("throttle_time_ms", "int32", "1+"),
    ),
)

METADATA = Api(
    3,
    "Metadata",
    0,
    12,
    9,
    request=(
        f(
            "topics",
            (f("topic_id", "uuid", "10+"), f("name", "string", null="10+")),
            null="1+",
        ),
        f("allow_auto_topic_creation", "bool", "4+", default=True),
        f("include_cluster_authorized_operations", "bool", "8-10"),
        f("include_topic_authorized_operations", "bool", "8+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "3+"),
        f(
            "brokers",
            (f("node_id", "int32"), f("host", "string"), f("port", "int32"), f("rack", "string", "1+", null="1+")),
        ),
        f("cluster_id", "string", "2+", null="2+"),
        f("controller_id", "int32", "1+", default=-1),
        f(
            "topics",
            (
                f("error_code", "int16"),
                f("name", "string", null="12+"),
                f("topic_id", "uuid", "10+"),
                f("is_internal", "bool", "1+"),
                f(
                    "partitions",
                    (
                        f("error_code", "int16"),
                        f("partition_index", "int32"),
                        f("leader_id", "int32"),
                        f("leader_epoch", "int32", "7+", default=-1),
                        f("replica_nodes", I32S),
                        f("isr_nodes", I32S),
                        f("offline_replicas", I32S, "5+"),
                    ),
                ),
                f("topic_authorized_operations", "int32", "8+", default=-2147483648),
            ),
        ),
        f("cluster_authorized_operations", "int32", "8-10", default=-2147483648),
    ),
)

PRODUCE = Api(
    0,
    "Produce",
    3,
    9,
    9,
    request=(
        f("transactional_id", "string", "3+", null="3+"),
        f("acks", "int16"),
        f("timeout_ms", "int32"),
        f(
            "topic_data",
            (f("name", "string"), f("partition_data", (f("index", "int32"), f("records", "records", null="0+")))),
        ),
    ),
    response=(
        f(
            "responses",
            (
                f("name", "string"),
                f(
                    "partition_responses",
                    (
                        f("index", "int32"),
                        f("error_code", "int16"),
                        f("base_offset", "int64"),
                        f("log_append_time_ms", "int64", "2+", default=-1),
                        f("log_start_offset", "int64", "5+", default=-1),
                        f(
                            "record_errors",
                            (f("batch_index", "int32"), f("batch_index_error_message", "string", null="8+")),
                            "8+",
                        ),
                        f("error_message", "string", "8+", null="8+"),
                    ),
                ),
            ),
        ),
        f("throttle_time_ms", "int32", "1+"),
    ),
)

FETCH = Api(
    1,
    "Fetch",
    4,
    12,
    12,
    request=(
        f("replica_id", "int32", default=-1),
        f("max_wait_ms", "int32"),
        f("min_bytes", "int32"),
        f("max_bytes", "int32", "3+", default=0x7FFFFFFF),
        f("isolation_level", "int8", "4+"),
        f("session_id", "int32", "7+"),
        f("session_epoch", "int32", "7+", default=-1),
        f(
            "topics",
            (
                f("topic", "string"),
                f(
                    "partitions",
                    (
                        f("partition", "int32"),
                        f("current_leader_epoch", "int32", "9+", default=-1),
                        f("fetch_offset", "int64"),
                        f("last_fetched_epoch", "int32", "12+", default=-1),
                        f("log_start_offset", "int64", "5+", default=-1),
                        f("partition_max_bytes", "int32"),
                    ),
                ),
            ),
        ),
        f("forgotten_topics_data", (f("topic", "string"), f("partitions", I32S)), "7+"),
        f("rack_id", "string", "11+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f("error_code", "int16", "7+"),
        f("session_id", "int32", "7+"),
        f(
            "responses",
            (
                f("topic", "string"),
                f(
                    "partitions",
                    (
                        f("partition_index", "int32"),
                        f("error_code", "int16"),
                        f("high_watermark", "int64", default=-1),
                        f("last_stable_offset", "int64", "4+", default=-1),
                        f("log_start_offset", "int64", "5+", default=-1),
                        f("aborted_transactions", (f("producer_id", "int64"), f("first_offset", "int64")), "4+", "4+"),
                        f("preferred_read_replica", "int32", "11+", default=-1),
                        f("records", "records", null="0+"),
                    ),
                ),
            ),
        ),
    ),
)

LIST_OFFSETS = Api(
    2,
    "ListOffsets",
    1,
    7,
    6,
    request=(
        f("replica_id", "int32", default=-1),
        f("isolation_level", "int8", "2+"),
        f(
            "topics",
            (
                f("name", "string"),
                f(
                    "partitions",
                    (
                        f("partition_index", "int32"),
                        f("current_leader_epoch", "int32", "4+", default=-1),
                        f("timestamp", "int64"),
                    ),
                ),
            ),
        ),
    ),
    response=(
        f("throttle_time_ms", "int32", "2+"),
        f(
            "topics",
            (
                f("name", "string"),
                f(
                    "partitions",
                    (
                        f("partition_index", "int32"),
                        f("error_code", "int16"),
                        f("timestamp", "int64", default=-1),
                        f("offset", "int64", default=-1),
                        f("leader_epoch", "int32", "4+", default=-1),
                    ),
                ),
            ),
        ),
    ),
)

INIT_PRODUCER_ID = Api(
    22,
    "InitProducerId",
    0,
    4,
    2,
    request=(
        f("transactional_id", "string", null="0+"),
        f("transaction_timeout_ms", "int32"),
        f("producer_id", "int64", "3+", default=-1),
        f("producer_epoch", "int16", "3+", default=-1),
    ),
    response=(
        f("throttle_time_ms", "int32"),
        f("error_code", "int16"),
        f("producer_id", "int64", default=-1),
        f("producer_epoch", "int16", default=-1),
    ),
)
