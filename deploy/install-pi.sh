#!/usr/bin/env bash
# One Raspberry Pi runs everything: Mosquitto, the node, the collector and the dashboard.
#
#   git clone <this repository> tinyml && cd tinyml && sudo deploy/install-pi.sh
#
# On a fresh Raspberry Pi OS (Bookworm, 64-bit) it
#   1. installs Mosquitto and the build dependencies with apt;
#   2. makes the system user `tinyml` (groups gpio and audio) and copies the project to
#      /opt/tinyml, with its .venv (scripts/bootstrap: node, collector);
#   3. puts the configs in /etc/tinyml (node id = this host's name; existing files are kept);
#   4. installs config/mosquitto as a drop-in (/etc/mosquitto/conf.d/tinyml.conf, password
#      and ACL files in /etc/mosquitto/tinyml) with a random password per client, written to
#      /etc/tinyml/<role>.env (mode 600) and, for Home Assistant, printed once;
#   5. installs and enables the three units (deploy/*.service): they start now and after every
#      reboot, restart on failure, and run as `tinyml`.
# Running it again updates the code and units and keeps configs and passwords.
# Options: --no-node (a Pi without sensors), --prefix DIR (default /opt/tinyml).
set -euo pipefail

prefix=/opt/tinyml
with_node=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-node) with_node=0 ;;
    --prefix) prefix=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run it with sudo" >&2; exit 1; }
source=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n[install] %s\n' "$*"; }

say "apt: mosquitto, python3-venv, portaudio (the microphone), rsync"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients python3-venv \
  python3-dev portaudio19-dev rsync >/dev/null

say "user tinyml and $prefix"
for group in gpio audio; do getent group "$group" >/dev/null || groupadd --system "$group"; done
id tinyml >/dev/null 2>&1 || useradd --system --home-dir "$prefix" --shell /usr/sbin/nologin tinyml
usermod -a -G gpio,audio tinyml
install -d -o tinyml -g tinyml "$prefix" "$prefix/var"
rsync -a --delete --exclude .venv --exclude var --exclude data --exclude .git \
  "$source/" "$prefix/"
chown -R tinyml:tinyml "$prefix"
extras=(collector)
[ "$with_node" = 1 ] && extras+=(node)
sudo -u tinyml env HOME="$prefix" "$prefix/scripts/bootstrap" "${extras[@]}"

say "configs in /etc/tinyml"
install -d -m 755 /etc/tinyml
for role in node collector dashboard; do
  if [ ! -e "/etc/tinyml/$role.toml" ]; then
    install -m 644 "$prefix/config/$role.toml" "/etc/tinyml/$role.toml"
  fi
done
node_id=$(hostname | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)
sed -i "s/^id = \"node-1\"/id = \"$node_id\"/" /etc/tinyml/node.toml
sed -i 's|^spool_path = .*|spool_path = "var/node-spool.sqlite3"|' /etc/tinyml/node.toml
# Absolute, so that `collector enroll` run from anywhere changes the file the unit reads.
sed -i "s|^state_path = \"var/|state_path = \"$prefix/var/|; s|^enrollment_path = \"var/|enrollment_path = \"$prefix/var/|" /etc/tinyml/collector.toml

say "Mosquitto drop-in: passwords, ACL, /etc/mosquitto/conf.d/tinyml.conf"
install -d -m 750 -o root -g mosquitto /etc/mosquitto/tinyml
install -m 640 -o root -g mosquitto "$prefix/config/mosquitto/acl" /etc/mosquitto/tinyml/acl
touch /etc/mosquitto/tinyml/passwd
chown root:mosquitto /etc/mosquitto/tinyml/passwd
chmod 640 /etc/mosquitto/tinyml/passwd
new_password() {  # new_password USER ENV-FILE: a password for USER, unless it has one
  local user=$1 env=$2 password
  if grep -q "^$user:" /etc/mosquitto/tinyml/passwd; then return 1; fi
  password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  mosquitto_passwd -b /etc/mosquitto/tinyml/passwd "$user" "$password"
  if [ -n "$env" ]; then
    printf 'TINYML_BROKER_USERNAME=%s\nTINYML_BROKER_PASSWORD=%s\n' "$user" "$password" > "$env"
    chown tinyml:tinyml "$env"
    chmod 600 "$env"
  else
    echo "Home Assistant: MQTT user $user, password $password (shown once; host $(hostname))"
  fi
}
new_password "$node_id" /etc/tinyml/node.env || true
new_password collector-1 /etc/tinyml/collector.env || true
new_password dashboard /etc/tinyml/dashboard.env || true
new_password homeassistant "" || true
install -m 644 "$prefix/config/mosquitto/tinyml.conf" /etc/mosquitto/conf.d/tinyml.conf
systemctl enable mosquitto >/dev/null
systemctl restart mosquitto

units=(tinyml-collector tinyml-dashboard)
[ "$with_node" = 1 ] && units+=(tinyml-node)
say "units: ${units[*]}"
for unit in "${units[@]}"; do
  install -m 644 "$prefix/deploy/$unit.service" "/etc/systemd/system/$unit.service"
done
systemctl daemon-reload
systemctl enable "${units[@]}" >/dev/null
systemctl restart "${units[@]}"
systemctl --no-pager --lines=0 status mosquitto "${units[@]}" || true
say "done: the dashboard listens on 127.0.0.1:8080 (see /etc/tinyml/dashboard.toml);"
say "logs: journalctl -u tinyml-node -u tinyml-collector -f"
