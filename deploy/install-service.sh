#!/usr/bin/env bash
# Installs agent-broker as a systemd service:
#   - a system user "agent-broker" (home /var/lib/agent-broker),
#   - a venv under PREFIX (default /opt/agent-broker) with this checkout installed,
#   - /etc/agent-broker/broker.toml (copied from the checkout's broker.toml, only if absent),
#   - /etc/systemd/system/agent-broker.service, then `systemctl daemon-reload`.
# It does not start or enable the service; it prints how to.
#
# Usage: deploy/install-service.sh [--dry-run] [--prefix DIR] [--config FILE] [--python PYTHON]
#   --dry-run   print every step instead of doing it (needs no root)
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/agent-broker
CONFIG_SRC="$SRC/broker.toml"
PYTHON=python3
DRY_RUN=0
CONF_DIR=/etc/agent-broker
UNIT_DIR=/etc/systemd/system
SERVICE_USER=agent-broker
STATE_DIR=/var/lib/agent-broker

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --config) CONFIG_SRC="${2:?--config needs a file}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-service.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

case "$PREFIX" in
    /*) ;;
    *) echo "install-service.sh: --prefix must be absolute: $PREFIX" >&2; exit 2 ;;
esac

# run CMD...: do it, or print it on --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install-service.sh: run as root (or try --dry-run)" >&2
    exit 1
fi
if [ ! -f "$CONFIG_SRC" ]; then
    echo "install-service.sh: no config file at $CONFIG_SRC" >&2
    exit 1
fi

# 1. The service user.
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    echo "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# 2. The venv with the package.
run "$PYTHON" -m venv "$PREFIX"
run "$PREFIX/bin/python" -m pip install --disable-pip-version-check --upgrade "$SRC"
run install -d -m 0755 "$PREFIX/share/doc/agent-broker"
run install -m 0644 "$SRC/docs/config.md" "$PREFIX/share/doc/agent-broker/config.md"

# 3. The configuration, never overwritten; checked before the unit is installed.
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ -e "$CONF_DIR/broker.toml" ]; then
    echo "$CONF_DIR/broker.toml exists, kept"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG_SRC" "$CONF_DIR/broker.toml"
fi
# StateDirectory= would create it at the first start; check-config wants it now.
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
run env STATE_DIRECTORY="$STATE_DIR" "$PREFIX/bin/agent-broker" check-config \
    --config "$CONF_DIR/broker.toml"

# 4. The unit, pointing at this prefix.
UNIT_TMP="$(mktemp)"
trap 'rm -f "$UNIT_TMP"' EXIT
sed "s#/opt/agent-broker#$PREFIX#g" "$SRC/deploy/agent-broker.service" >"$UNIT_TMP"
run install -m 0644 "$UNIT_TMP" "$UNIT_DIR/agent-broker.service"
run systemctl daemon-reload

cat <<DONE
Installed. Next:
  put tokens and API keys in $CONF_DIR/env (BROKER_SERVER_TOKEN=..., mode 0640), then
  systemctl enable --now agent-broker
  journalctl -u agent-broker -f
DONE
