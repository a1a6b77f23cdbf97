#!/usr/bin/env bash
# Provision one fleet VM: provision.sh INDEX COUNT SUBNET
#   - apt packages, the project in /opt/fleet-py/.venv
#   - an etcd member (members on the first min(COUNT,3) VMs, a static initial cluster)
#   - /etc/fleet/fleet.conf and fleetd.service (+ fleetd.socket for the API)
# With ROOT=/some/dir it only writes the configuration files below that directory (dry run,
# used by the tests); nothing is installed or started.
set -euo pipefail

INDEX=${1:?usage: provision.sh INDEX COUNT SUBNET}
COUNT=${2:?usage: provision.sh INDEX COUNT SUBNET}
SUBNET=${3:-172.17.8}
ROOT=${ROOT:-}
PROJECT=/opt/fleet-py
IP="$SUBNET.$((100 + INDEX))"
MEMBERS=$(( COUNT < 3 ? COUNT : 3 ))

etcd_endpoints() {
    local i out=""
    for ((i = 1; i <= MEMBERS; i++)); do out+="${out:+,}http://$SUBNET.$((100 + i)):2379"; done
    echo "$out"
}

initial_cluster() {
    local i out=""
    for ((i = 1; i <= MEMBERS; i++)); do
        out+="${out:+,}$(printf 'fleet-%02d' "$i")=http://$SUBNET.$((100 + i)):2380"
    done
    echo "$out"
}

write_files() {
    local name
    name=$(printf 'fleet-%02d' "$INDEX")
    mkdir -p "$ROOT/etc/fleet" "$ROOT/etc/systemd/system"
    cat > "$ROOT/etc/fleet/fleet.conf" <<CONF
# written by vagrant/provision.sh
etcd_servers=$(etcd_endpoints)
public_ip=$IP
metadata="hostname=$name,vm=vagrant"
agent_ttl="5s"
engine_reconcile_interval=2
api_tcp=$IP:54728
api_insecure_tcp=true
CONF
    sed "s#^ExecStart=.*#ExecStart=$PROJECT/.venv/bin/fleetd --config /etc/fleet/fleet.conf#" \
        "${UNIT_SOURCE:-$PROJECT/units/fleetd.service}" > "$ROOT/etc/systemd/system/fleetd.service"
    if ((INDEX <= MEMBERS)); then
        cat > "$ROOT/etc/systemd/system/fleet-etcd.service" <<UNIT
[Unit]
Description=etcd member $name (fleet cluster)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
ExecStart=/usr/bin/etcd --name=$name --data-dir=/var/lib/fleet-etcd \\
  --listen-client-urls=http://$IP:2379,http://127.0.0.1:2379 --advertise-client-urls=http://$IP:2379 \\
  --listen-peer-urls=http://$IP:2380 --initial-advertise-peer-urls=http://$IP:2380 \\
  --initial-cluster=$(initial_cluster) --initial-cluster-token=fleet-vagrant --initial-cluster-state=new
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
    fi
}

if [ -n "$ROOT" ]; then
    write_files
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends etcd-server etcd-client systemd-container \
    busybox-static python3-venv iproute2 iptables dbus
systemctl disable --now etcd.service 2>/dev/null || true   # Debian's default single member
python3 -m venv "$PROJECT/.venv"
"$PROJECT/.venv/bin/pip" install -q "$PROJECT"
ln -sf "$PROJECT/.venv/bin/fleetctl" /usr/local/bin/fleetctl
write_files
systemctl daemon-reload
if ((INDEX <= MEMBERS)); then
    systemctl enable --now fleet-etcd.service
fi
systemctl enable --now fleetd.service
