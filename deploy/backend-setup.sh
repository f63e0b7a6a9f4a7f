#!/usr/bin/env bash
# `xdplb host --config lb.yaml --interface IFACE` does all of this from the balancers' config,
# and adds the second chance (docs/datapath.md); this script remains for hosts without the
# xdplb binary (`--kernel-tunnel`) and for setting VIPs by hand.
#
# Prepares a backend for xdplb DSR: the VIPs on lo (so the kernel accepts packets addressed to
# them), ARP settings so the backend never answers ARP for a VIP (only the path through the
# balancer may attract VIP traffic), and for `forwarding: ipip` the decapsulation of tunnelled
# requests: with xdplb's XDP program (--decap IFACE; needs the xdplb binary, works on kernels
# without tunnel drivers) or the kernel's ipip/ip6_tunnel drivers (--kernel-tunnel).
#
# Usage: backend-setup.sh [--decap IFACE | --kernel-tunnel] VIP [VIP...]
#        backend-setup.sh --remove [--decap IFACE] VIP [VIP...]
set -euo pipefail
remove=0 decap="" kernel=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --remove) remove=1; shift ;;
    --decap) decap="${2:?--decap needs an interface}"; shift 2 ;;
    --kernel-tunnel) kernel=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--remove] [--decap IFACE | --kernel-tunnel] VIP [VIP...]" >&2; exit 2; }
for vip in "$@"; do
  if [[ "$vip" == *:* ]]; then prefix=128; else prefix=32; fi
  if (( remove )); then
    ip addr del "$vip/$prefix" dev lo 2>/dev/null || true
    echo "removed $vip/$prefix from lo"
  else
    ip addr replace "$vip/$prefix" dev lo
    echo "added $vip/$prefix on lo"
  fi
done
if (( remove )); then
  if [[ -n "$decap" ]]; then xdplb decap --interface "$decap" --detach; fi
  exit 0
fi
# arp_ignore=1: answer ARP only for addresses on the interface the request came in on.
# arp_announce=2: never use the VIP as the source of our own ARP requests.
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
echo "set net.ipv4.conf.all.arp_ignore=1 arp_announce=2"
if [[ -n "$decap" ]]; then
  # Strips the outer header of IP-in-IP packets addressed to IFACE's addresses before the
  # stack sees them; everything else passes untouched. Stays attached after this script.
  xdplb decap --interface "$decap"
elif (( kernel )); then
  # The fallback devices tunl0 (4in4), sit0 (6in4) and ip6tnl0 (6in6, 4in6) accept tunnels from
  # any source. The inner source is the client, reached through the normal default route, not
  # the tunnel device: reverse-path filtering on them must be loose.
  modprobe ipip
  modprobe sit
  modprobe ip6_tunnel
  ip -6 tunnel change ip6tnl0 mode any
  for dev in tunl0 sit0 ip6tnl0; do ip link set "$dev" up; done
  sysctl -qw net.ipv4.conf.tunl0.rp_filter=2 net.ipv4.conf.sit0.rp_filter=2
  echo "tunl0, sit0 and ip6tnl0 up (4in4, 6in4, 6in6, 4in6); rp_filter loose on them"
fi
