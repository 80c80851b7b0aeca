"""The local stack: a real Kafka broker and a real Postgres, started by the project itself.

Three ways to get one, chosen by :func:`resolve_endpoints` / :class:`LocalStack`:

* **external** — ``LOYALTY_KAFKA_BOOTSTRAP`` and ``LOYALTY_PG_DSN`` are set: nothing is started, both are
  checked to answer (fast failure naming the address otherwise);
* **embedded** (default) — Kafka 4.1.x from Maven Central jars (KRaft, one node) and a throwaway
  ``initdb`` cluster, on free loopback ports, as child processes;
* **testcontainers** — ``LOYALTY_STACK_BACKEND=testcontainers`` where a Docker engine answers.
"""

from .processes import StackError
from .stack import Endpoints, LocalStack, check_external, default_cache_dir, default_stack_dir

__all__ = ["Endpoints", "LocalStack", "StackError", "check_external", "default_cache_dir", "default_stack_dir"]
