#!/usr/bin/env bash
# Install cliproxy as a systemd service on this host. Run as root from a checkout (or an unpacked sdist):
#
#   sudo scripts/install-service.sh [--config FILE] [--bin PATH | --from WHEEL_OR_DIR] [--now]
#
#   --config FILE  the config to install as /etc/cliproxy/config.yaml (default: ./config.yaml of
#                  the checkout). An existing /etc/cliproxy/config.yaml is never overwritten.
#   --bin PATH     use this `cliproxy` executable instead of installing one into /opt/cliproxy/venv.
#   --from SOURCE  what pip installs into the venv: a wheel file or a source directory
#                  (default: this checkout).
#   --now          start (or restart) the service at the end; otherwise it is only enabled.
#   --prefix DIR   install under DIR instead of /: DIR/opt/cliproxy, DIR/etc/cliproxy,
#                  DIR/var/lib/cliproxy and DIR/etc/systemd/system, with the config and the unit
#                  pointing at those paths (staging, packaging, tests).
#   --no-systemd   skip what needs root or a running systemd: the user, file ownership,
#                  systemctl and --now (the files are still written). Needs no root.
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
# The paths below are under ROOT_DIR, which --prefix changes (default: the real root).
ROOT_DIR=""
set_paths() {
    CONFIG_DIR="$ROOT_DIR/etc/cliproxy"
    STATE_DIR="$ROOT_DIR/var/lib/cliproxy"
    DATABASE="$STATE_DIR/cliproxy.db"
    PREFIX="$ROOT_DIR/opt/cliproxy"
    UNIT_DIR="$ROOT_DIR/etc/systemd/system"
    UNIT_PATH="$UNIT_DIR/cliproxy.service"
}
set_paths

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
SOURCE="$REPO"
BIN=""
START=0
SYSTEMD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --config) SOURCE_CONFIG="${2:?--config needs a file}"; shift 2 ;;
        --bin) BIN="${2:?--bin needs a path}"; shift 2 ;;
        --from) SOURCE="${2:?--from needs a wheel or a directory}"; shift 2 ;;
        --now) START=1; shift ;;
        --prefix)
            mkdir -p "${2:?--prefix needs a directory}"
            ROOT_DIR="$(cd "$2" && pwd)"; set_paths; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

if [[ "$SYSTEMD" -eq 1 ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "run as root (sudo $0), or pass --no-systemd"
    command -v systemctl >/dev/null || die "systemctl not found: this host does not run systemd (--no-systemd writes the files only)"
    OWNER=(-o "$SERVICE_USER" -g "$SERVICE_USER")
else
    OWNER=()  # files stay owned by whoever runs this
    START=0
fi

# 1. The user.
if [[ "$SYSTEMD" -eq 1 ]] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell "$nologin" "$SERVICE_USER"
    say "created system user $SERVICE_USER"
fi

# 2. The program.
if [[ -z "$BIN" ]]; then
    command -v python3 >/dev/null || die "python3 not found (or pass --bin PATH)"
    [[ -x "$PREFIX/venv/bin/python" ]] || python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install --quiet --upgrade "$SOURCE"
    BIN="$PREFIX/venv/bin/cliproxy"
    say "installed cliproxy into $PREFIX/venv"
fi
[[ -x "$BIN" ]] || die "not an executable: $BIN"

# 3. The config (never overwritten) and the state directory.
install -d "${OWNER[@]}" -m 0750 "$CONFIG_DIR"
if [[ ! -e "$CONFIG_DIR/config.yaml" ]]; then
    [[ -f "$SOURCE_CONFIG" ]] || die "no config to install: $SOURCE_CONFIG"
    install "${OWNER[@]}" -m 0600 "$SOURCE_CONFIG" "$CONFIG_DIR/config.yaml"
    say "installed $SOURCE_CONFIG as $CONFIG_DIR/config.yaml"
else
    say "keeping the existing $CONFIG_DIR/config.yaml"
fi
set_database "$CONFIG_DIR/config.yaml"
install -d "${OWNER[@]}" -m 0750 "$STATE_DIR"
if [[ "$SYSTEMD" -eq 1 && -e "$DATABASE" ]]; then
    chown "$SERVICE_USER:$SERVICE_USER" "$DATABASE"*
fi

# 4. The unit (its paths follow --prefix; they are the real ones by default).
tmp_unit="$(mktemp)"
trap 'rm -f "$tmp_unit"' EXIT
sed -e "s|^ExecStart=.*cliproxy serve|ExecStart=$BIN serve|" \
    -e "s|/etc/cliproxy|$CONFIG_DIR|g" -e "s|/var/lib/cliproxy|$STATE_DIR|g" "$HERE/cliproxy.service" >"$tmp_unit"
install -d "$UNIT_DIR"
install -m 0644 "$tmp_unit" "$UNIT_PATH"
if [[ "$SYSTEMD" -eq 1 ]]; then
    systemctl daemon-reload
    systemctl enable cliproxy.service >/dev/null
    say "installed and enabled $UNIT_PATH"
else
    say "installed $UNIT_PATH (not enabled: --no-systemd)"
fi

as_service_user=()
if [[ "$SYSTEMD" -eq 1 ]]; then
    as_service_user=(runuser -u "$SERVICE_USER" --)
fi
if ! "${as_service_user[@]}" "$BIN" check-config --config "$CONFIG_DIR/config.yaml"; then
    say "warning: $CONFIG_DIR/config.yaml does not validate yet; fix it before starting the service"
    START=0
fi

if [[ "$START" -eq 1 ]]; then
    systemctl restart cliproxy.service
    say "started: systemctl status cliproxy; journalctl -u cliproxy -f"
elif [[ "$SYSTEMD" -eq 0 ]]; then
    say "run it with: $BIN serve --config $CONFIG_DIR/config.yaml"
else
    say "start it with: systemctl start cliproxy; then: journalctl -u cliproxy -f"
fi
