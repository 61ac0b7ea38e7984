#!/bin/sh
# Installs wfcg on a Debian 12 guest as the systemd service (deploy/wfcg.service:
# Delegate=yes, Type=notify, KillMode=process) and starts it. The same for the
# Vagrantfile and for scripts/vm-test's QEMU guest.
#   provision.sh [WFCG_BINARY]   (default: /vagrant/target/release/wfcg)
set -eu
bin=${1:-/vagrant/target/release/wfcg}
[ -x "$bin" ] || { echo "provision: no wfcg binary at $bin (cargo build --release on the host)" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/wfcg
/usr/local/bin/wfcg install-service
systemctl is-active --quiet wfcg.service
echo "provision: wfcg.service is active ($(wfcg --version))"
