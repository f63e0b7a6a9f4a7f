//! The config the generated traffic aims at: every kind of VIP the datapath tells apart.

/// The config the generated flows aim at (the differential test's phase 1): every kind of VIP
/// the datapath distinguishes: L2 and `ipip` (4in4, 6in6, 4in6, 6in4 and a VIP with backends
/// of both families), addresses that answer echo requests and ones that do not, and a tunnel
/// MTU small enough that generated packets exceed it. The generator's targets (`targets` in
/// `mod.rs`) name these VIPs' addresses and ports, so a config for its traffic starts from
/// this one.
pub const CONFIG_A: &str = "\
interface: lo
tunnel:
  source_v4: 172.31.64.0/18
  source_v6: 'fd00:ffff::a000:0/100'
  mtu: 1400
vips:
  - name: web
    address: 10.201.0.10
    port: 80
    protocol: tcp
    icmp_echo: true
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02', weight: 50 }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: web-any
    address: 10.201.0.10
    port: 0
    protocol: tcp
    ring_size: 211
    backends:
      - { address: 10.200.0.104, mac: '02:00:00:00:01:04' }
      - { address: 10.200.0.105, mac: '02:00:00:00:01:05' }
  - name: dns-any
    address: 10.201.0.11
    port: 0
    protocol: udp
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
  - name: sticky
    address: 10.201.0.12
    port: 443
    protocol: tcp
    hash: source-ip
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: stateless-dns
    address: 10.201.0.14
    port: 53
    protocol: udp
    stateless: true
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: web6
    address: 'fd00:201::10'
    port: 443
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 'fd00:200::101', mac: '02:00:00:00:02:01' }
      - { address: 'fd00:200::102', mac: '02:00:00:00:02:02' }
  - name: dns6
    address: 'fd00:201::11'
    port: 0
    protocol: udp
    icmp_echo: true
    hash: source-ip
    stateless: true
    ring_size: 1009
    backends:
      - { address: 'fd00:200::101', mac: '02:00:00:00:02:01' }
      - { address: 'fd00:200::102', mac: '02:00:00:00:02:02' }
      - { address: 'fd00:200::103', mac: '02:00:00:00:02:03' }
  - name: empty
    address: 10.201.0.13
    port: 80
    protocol: tcp
    backends: []
  - name: drained
    address: 10.201.0.15
    port: 80
    protocol: udp
    ring_size: 211
    backends:
      - { address: 10.200.0.106, mac: '02:00:00:00:01:06', state: draining }
  - name: tun4
    address: 10.201.0.20
    port: 80
    protocol: tcp
    forwarding: ipip
    icmp_echo: true
    ring_size: 1009
    backends:
      - { address: 10.202.0.1, mac: '02:00:00:00:00:fe' }
      - { address: 10.202.0.2, mac: '02:00:00:00:00:fe' }
      - { address: 'fd00:202::3', mac: '02:00:00:00:00:fd' }
  - name: tun4in6
    address: 10.201.0.21
    port: 0
    protocol: udp
    forwarding: ipip
    stateless: true
    ring_size: 1009
    backends:
      - { address: 'fd00:202::1', mac: '02:00:00:00:00:fd' }
      - { address: 'fd00:202::2', mac: '02:00:00:00:00:fd' }
  - name: tun6
    address: 'fd00:201::20'
    port: 443
    protocol: tcp
    forwarding: ipip
    ring_size: 1009
    backends:
      - { address: 'fd00:202::1', mac: '02:00:00:00:00:fd' }
      - { address: 'fd00:202::2', mac: '02:00:00:00:00:fd' }
  - name: tun6in4
    address: 'fd00:201::21'
    port: 0
    protocol: udp
    forwarding: ipip
    hash: source-ip
    icmp_echo: true
    ring_size: 1009
    backends:
      - { address: 10.202.0.1, mac: '02:00:00:00:00:fe' }
      - { address: 10.202.0.2, mac: '02:00:00:00:00:fe' }
";
