#!/usr/bin/env bash
# Prepares a backend for xdplb L2 DSR: the VIP on lo (so the kernel accepts packets addressed to
# it) and ARP settings so the backend never answers ARP for the VIP (only the balancer's router
# path may attract VIP traffic). Usage: backend-setup.sh VIP [VIP...]   (undo: --remove VIP...)
set -euo pipefail
remove=0
if [[ "${1:-}" == "--remove" ]]; then remove=1; shift; fi
[[ $# -ge 1 ]] || { echo "usage: $0 [--remove] VIP [VIP...]" >&2; exit 2; }
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
if (( ! remove )); then
  # arp_ignore=1: answer ARP only for addresses on the interface the request came in on.
  # arp_announce=2: never use the VIP as the source of our own ARP requests.
  sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  echo "set net.ipv4.conf.all.arp_ignore=1 arp_announce=2"
fi
