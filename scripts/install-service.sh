#!/usr/bin/env bash
# Install cliproxy as a systemd service on this host. Run as root from a checkout:
#
#   sudo scripts/install-service.sh [--config FILE] [--bin PATH] [--now]
#
#   --config FILE  the config to install as /etc/cliproxy/config.yaml (default: ./config.yaml of
#                  the checkout). An existing /etc/cliproxy/config.yaml is never overwritten.
#   --bin PATH     use this `cliproxy` executable instead of installing one into /opt/cliproxy/venv.
#   --now          start (or restart) the service at the end; otherwise it is only enabled.
#
# What it does, each step safe to repeat:
#   - a system user and group `cliproxy` (no login, home /var/lib/cliproxy);
#   - a virtualenv in /opt/cliproxy/venv with cliproxy installed from this checkout (unless --bin);
#   - /etc/cliproxy/config.yaml (owned by cliproxy: the management API writes changes back to it)
#     with `database:` pointing at the state directory, /var/lib/cliproxy/cliproxy.db;
#   - /var/lib/cliproxy (systemd's StateDirectory= creates it too);
#   - /etc/systemd/system/cliproxy.service, then `systemctl daemon-reload` and `enable`.
#
# `install-service.sh --set-database-only FILE` only points FILE's `database:` at the state
# directory (used by the tests; needs no root).
set -euo pipefail

SERVICE_USER=cliproxy
CONFIG_DIR=/etc/cliproxy
STATE_DIR=/var/lib/cliproxy
DATABASE="$STATE_DIR/cliproxy.db"
PREFIX=/opt/cliproxy
UNIT_PATH=/etc/systemd/system/cliproxy.service

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

say() { printf 'install-service: %s\n' "$*"; }
die() { printf 'install-service: error: %s\n' "$*" >&2; exit 1; }

# Point the top-level `database:` key at the state directory, keeping any comment on the line;
# append the key when the file has none.
set_database() {
    local file="$1"
    [[ -f "$file" ]] || die "no such config file: $file"
    if grep -qE '^database:' "$file"; then
        local tmp
        tmp="$(mktemp "$file.XXXXXX")"
        sed -E -e "s@^database:[[:space:]]*(\"[^\"]*\"|'[^']*'|[^#[:space:]]*)[[:space:]]*@database: $DATABASE @" \
            -e '/^database:/ s@[[:space:]]+$@@' "$file" >"$tmp"
        cat "$tmp" >"$file"  # in place: keeps the file's owner and mode
        rm -f "$tmp"
    else
        printf '\ndatabase: %s\n' "$DATABASE" >>"$file"
    fi
}

if [[ "${1:-}" == "--set-database-only" ]]; then
    [[ $# -eq 2 ]] || die "usage: $0 --set-database-only FILE"
    set_database "$2"
    exit 0
fi

SOURCE_CONFIG="$REPO/config.yaml"
BIN=""
START=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --config) SOURCE_CONFIG="${2:?--config needs a file}"; shift 2 ;;
        --bin) BIN="${2:?--bin needs a path}"; shift 2 ;;
        --now) START=1; shift ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ "$(id -u)" -eq 0 ]] || die "run as root (sudo $0)"
command -v systemctl >/dev/null || die "systemctl not found: this host does not run systemd"

# 1. The user.
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell "$nologin" "$SERVICE_USER"
    say "created system user $SERVICE_USER"
fi

# 2. The program.
if [[ -z "$BIN" ]]; then
    command -v python3 >/dev/null || die "python3 not found (or pass --bin PATH)"
    [[ -x "$PREFIX/venv/bin/python" ]] || python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install --quiet --upgrade "$REPO"
    BIN="$PREFIX/venv/bin/cliproxy"
    say "installed cliproxy into $PREFIX/venv"
fi
[[ -x "$BIN" ]] || die "not an executable: $BIN"

# 3. The config (never overwritten) and the state directory.
install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$CONFIG_DIR"
if [[ ! -e "$CONFIG_DIR/config.yaml" ]]; then
    [[ -f "$SOURCE_CONFIG" ]] || die "no config to install: $SOURCE_CONFIG"
    install -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0600 "$SOURCE_CONFIG" "$CONFIG_DIR/config.yaml"
    say "installed $SOURCE_CONFIG as $CONFIG_DIR/config.yaml"
else
    say "keeping the existing $CONFIG_DIR/config.yaml"
fi
set_database "$CONFIG_DIR/config.yaml"
install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"
if [[ -e "$DATABASE" ]]; then
    chown "$SERVICE_USER:$SERVICE_USER" "$DATABASE"*
fi

# 4. The unit.
tmp_unit="$(mktemp)"
trap 'rm -f "$tmp_unit"' EXIT
sed "s|^ExecStart=.*cliproxy serve|ExecStart=$BIN serve|" "$HERE/cliproxy.service" >"$tmp_unit"
install -m 0644 "$tmp_unit" "$UNIT_PATH"
systemctl daemon-reload
systemctl enable cliproxy.service >/dev/null
say "installed and enabled $UNIT_PATH"

if ! runuser -u "$SERVICE_USER" -- "$BIN" check-config --config "$CONFIG_DIR/config.yaml"; then
    say "warning: $CONFIG_DIR/config.yaml does not validate yet; fix it before starting the service"
    START=0
fi

if [[ "$START" -eq 1 ]]; then
    systemctl restart cliproxy.service
    say "started: systemctl status cliproxy; journalctl -u cliproxy -f"
else
    say "start it with: systemctl start cliproxy; then: journalctl -u cliproxy -f"
fi
