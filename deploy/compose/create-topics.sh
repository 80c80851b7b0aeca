#!/bin/sh
# Creates every topic listed in topics.generated.txt (generated from the contracts' catalogue by
# deploy/gen_topics.py): "<name> <partitions> <retention.ms>" per line. Idempotent.
set -eu
topics_file="${TOPICS_FILE:-/init/topics.txt}"
kafka_bin="${KAFKA_BIN:-/opt/kafka/bin}"
grep -v '^#' "$topics_file" | while read -r name partitions retention; do
    [ -n "$name" ] || continue
    "$kafka_bin/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "$name" --partitions "$partitions" --replication-factor 1 \
        --config "retention.ms=$retention" --config cleanup.policy=delete
done
echo "topics ready:"
"$kafka_bin/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --list
