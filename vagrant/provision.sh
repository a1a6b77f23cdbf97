#!/usr/bin/env bash
# Provision one fleet VM (run by Vagrant as root):
#   provision.sh INDEX COUNT SUBNET [tls|insecure] [kvm|emulated]
#   - the project from the synced checkout /opt/fleet-py into the box's /opt/fleet-venv (--no-deps:
#     the box built by `fleet-lab box build` holds the dependencies and the system packages)
#   - the node configuration from fleetlab.nodeconfig (the same render code as the nspawn lab):
#     fleet.conf, the etcd member unit (first min(COUNT,3) VMs), fleetd.service, TLS files
#   - etcd and fleetd started without blocking: an etcd member of a static cluster signals
#     ready only with quorum, so a blocking start on the first VM would wait for the second
# On a box without /opt/fleet-venv (e.g. debian/bookworm64 on VirtualBox) it installs the
# packages and dependencies first (slow: ~10 minutes under emulation).
set -euo pipefail

INDEX=${1:?usage: provision.sh INDEX COUNT SUBNET [tls|insecure]}
COUNT=${2:?usage: provision.sh INDEX COUNT SUBNET [tls|insecure]}
SUBNET=${3:-172.17.8}
SECURITY=${4:-tls}
ACCEL=${5:-kvm}
PROJECT=/opt/fleet-py
VENV=/opt/fleet-venv
PKI_UPLOAD=/tmp/fleet-pki
PKI_DIR=/etc/fleet/vagrant-pki
GROUP=fleet
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
t0=$(date +%s)
say() { echo "provision fleet-$(printf %02d "$INDEX"): $* (+$(( $(date +%s) - t0 ))s)"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "no $VENV in this box: installing packages and dependencies (use the box of fleet-lab box build)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-server etcd-client systemd-container \
        busybox-static python3-venv iproute2 iptables dbus tini bind9-dnsutils nginx-light rsync
    systemctl disable --now etcd.service 2>/dev/null || true   # Debian's single member
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "setuptools>=68" wheel
    "$VENV/bin/pip" install -q "$PROJECT"
fi
ln -sfn "$VENV" "$PROJECT/.venv"   # the units run <checkout>/.venv/bin/fleetd, as in the nspawn lab
if compgen -G "$VENV/lib/python3*/site-packages/__editable__*fleet_py*" >/dev/null; then
    say "project installed in the box (editable from $PROJECT)"
else
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation --no-index --force-reinstall "$PROJECT"
    say "project installed"
fi
for tool in fleetctl fleetd fleet-run fleet-confd; do ln -sf "$VENV/bin/$tool" "/usr/local/bin/$tool"; done

# fleetctl for the vagrant user: the API's unix socket, group fleet (fleetd's api_socket_group)
getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
id vagrant >/dev/null 2>&1 && usermod -aG "$GROUP" vagrant

args=(--index "$INDEX" --nodes "$COUNT" --subnet "$SUBNET" --checkout "$PROJECT")
dropin=/etc/systemd/system/fleetd.service.d/vm-emulation.conf
if [ "$ACCEL" = emulated ]; then
    # under QEMU emulation (TCG) Python runs ~20 times slower: fleetd's start-up takes minutes
    # and a busy VM misses 5 s leases and a 30 s watchdog
    args+=(--agent-ttl 30s)
    mkdir -p "$(dirname "$dropin")"
    printf '[Service]\nTimeoutStartSec=15min\nWatchdogSec=5min\n' > "$dropin"
else
    rm -f "$dropin"
fi
if [ "$SECURITY" = insecure ]; then
    args+=(--insecure)
else
    # the CA certificate and this VM's key pair, made on the host (vagrant/.vagrant/fleet-pki)
    src=$(dirname "$(find "$PKI_UPLOAD" -name ca.pem | head -n1)")
    install -d -m 700 "$PKI_DIR"
    install -m 644 "$src/ca.pem" "$src/fleet-$(printf %02d "$INDEX").pem" "$PKI_DIR/"
    install -m 600 "$src/fleet-$(printf %02d "$INDEX").key" "$PKI_DIR/"
    rm -rf "$PKI_UPLOAD"
    args+=(--pki-dir "$PKI_DIR")
fi
"$VENV/bin/python" -m fleetlab.nodeconfig write "${args[@]}" --root / >/dev/null

systemctl daemon-reload
units=(fleetd.service)
[ -e /etc/systemd/system/fleetlab-etcd.service ] && units=(fleetlab-etcd.service "${units[@]}")
systemctl restart --no-block "${units[@]}"
say "started ${units[*]} (without waiting: etcd needs quorum)"
