#!/bin/sh
# Container entrypoint: `<service> [args]` runs python -m loyalty_<service>; `migrate <service>` applies
# that service's migrations and exits (used by the Helm migrations Job).
set -eu

usage() {
    echo "usage: loyalty-entrypoint {tiers|referrals|surveys|notifier} [args...]" >&2
    echo "       loyalty-entrypoint migrate {tiers|referrals|surveys|notifier}" >&2
}

is_service() {
    case "$1" in
        tiers|referrals|surveys|notifier) return 0 ;;
        *) return 1 ;;
    esac
}

command="${1:-}"
case "$command" in
    migrate)
        service="${2:-${LOYALTY_SERVICE:-}}"
        if ! is_service "$service"; then
            echo "loyalty-entrypoint: migrate needs a service name, got '${service}'" >&2
            usage
            exit 64
        fi
        export LOYALTY_SERVICE="$service"
        exec python /opt/loyalty/bin/migrate.py "$service"
        ;;
    -h|--help|help|"")
        usage
        [ -n "$command" ] && exit 0
        exit 64
        ;;
    *)
        if ! is_service "$command"; then
            echo "loyalty-entrypoint: unknown service '${command}'" >&2
            usage
            exit 64
        fi
        shift
        export LOYALTY_SERVICE="$command"
        exec python -m "loyalty_${command}" "$@"
        ;;
esac
