"""Kafka's admin APIs as Sluice serves them (docs/kafka.md): CreateTopics, DeleteTopics,
CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DeleteRecords."""

from __future__ import annotations

from ipc.kafka.schema import Api, arr, f

STRS = arr("string")
I32S = arr("int32")
_RESULT = (f("throttle_time_ms", "int32"),)

CREATE_TOPICS = Api(
    19,
    "CreateTopics",
    0,
    7,
    5,
    request=(
        f(
            "topics",
            (
                f("name", "string"),
                f("num_partitions", "int32"),
                f("replication_factor", "int16"),
                f("assignments", (f("partition_index", "int32"), f("broker_ids", I32S))),
                f("configs", (f("name", "string"), f("value", "string", null="0+"))),
            ),
        ),
        f("timeout_ms", "int32"),
        f("validate_only", "bool", "1+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "2+"),
        f(
            "topics",
            (
                f("name", "string"),
                f("topic_id", "uuid", "7+"),
                f("error_code", "int16"),
                f("error_message", "string", "1+", null="0+"),
                f("num_partitions", "int32", "5+", default=-1),
                f("replication_factor", "int16", "5+", default=-1),
                f(
                    "configs",
                    (
                        f("name", "string"),
                        f("value", "string", null="0+"),
                        f("read_only", "bool"),
                        f("config_source", "int8", default=-1),
                        f("is_sensitive", "bool"),
                    ),
                    "5+",
                    "5+",
                ),
            ),
        ),
    ),
)

DELETE_TOPICS = Api(
    20,
    "DeleteTopics",
    0,
    6,
    4,
    request=(
        f("topics", (f("name", "string", null="6+"), f("topic_id", "uuid")), "6+"),
        f("topic_names", STRS, "0-5"),
        f("timeout_ms", "int32"),
    ),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f(
            "responses",
            (
                f("name", "string", null="6+"),
                f("topic_id", "uuid", "6+"),
                f("error_code", "int16"),
                f("error_message", "string", "5+", null="5+"),
            ),
        ),
    ),
)

CREATE_PARTITIONS = Api(
    37,
    "CreatePartitions",
    0,
    3,
    2,
    request=(
        f(
            "topics",
            (f("name", "string"), f("count", "int32"), f("assignments", (f("broker_ids", I32S),), null="0+")),
        ),
        f("timeout_ms", "int32"),
        f("validate_only", "bool"),
    ),
    response=(
        *_RESULT,
        f("results", (f("name", "string"), f("error_code", "int16"), f("error_message", "string", null="0+"))),
    ),
)

DESCRIBE_CONFIGS = Api(
    32,
    "DescribeConfigs",
    0,
    4,
    4,
    request=(
        f(
            "resources",
            (
                f("resource_type", "int8"),
                f("resource_name", "string"),
                f("configuration_keys", STRS, null="0+"),
            ),
        ),
        f("include_synonyms", "bool", "1+"),
        f("include_documentation", "bool", "3+"),
    ),
    response=(
        *_RESULT,
        f(
            "results",
            (
                f("error_code", "int16"),
                f("error_message", "string", null="0+"),
                f("resource_type", "int8"),
                f("resource_name", "string"),
                f(
                    "configs",
                    (
                        f("name", "string"),
                        f("value", "string", null="0+"),
                        f("read_only", "bool"),
                        f("is_default", "bool", "0"),
                        f("config_source", "int8", "1+", default=-1),
                        f("is_sensitive", "bool"),
                        f(
                            "synonyms",
                            (f("name", "string"), f("value", "string", null="0+"), f("source", "int8")),
                            "1+",
                        ),
                        f("config_type", "int8", "3+"),
                        f("documentation", "string", "3+", null="0+"),
                    ),
                ),
            ),
        ),
    ),
)

_ALTER_RESPONSE = (
    *_RESULT,
    f(
        "responses",
        (
            f("error_code", "int16"),
            f("error_message", "string", null="0+"),
            f("resource_type", "int8"),
            f("resource_name", "string"),
        ),
    ),
)

ALTER_CONFIGS = Api(
    33,
    "AlterConfigs",
    0,
    2,
    2,
    request=(
        f(
            "resources",
            (
                f("resource_type", "int8"),
                f("resource_name", "string"),
                f("configs", (f("name", "string"), f("value", "string", null="0+"))),
            ),
        ),
        f("validate_only", "bool"),
    ),
    response=_ALTER_RESPONSE,
)

INCREMENTAL_ALTER_CONFIGS = Api(
    44,
    "IncrementalAlterConfigs",
    0,
    1,
    1,
    request=(
        f(
            "resources",
            (
                f("resource_type", "int8"),
                f("resource_name", "string"),
                f(
                    "configs",
                    (f("name", "string"), f("config_operation", "int8"), f("value", "string", null="0+")),
                ),
            ),
        ),
        f("validate_only", "bool"),
    ),
    response=_ALTER_RESPONSE,
)

DELETE_RECORDS = Api(
    21,
    "DeleteRecords",
    0,
    2,
    2,
    request=(
        f("topics", (f("name", "string"), f("partitions", (f("partition_index", "int32"), f("offset", "int64"))))),
        f("timeout_ms", "int32"),
    ),
    response=(
        *_RESULT,
        f(
            "topics",
            (
                f("name", "string"),
                f(
                    "partitions",
                    (f("partition_index", "int32"), f("low_watermark", "int64", default=-1), f("error_code", "int16")),
                ),
            ),
        ),
    ),
)
