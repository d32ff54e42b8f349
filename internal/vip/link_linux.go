package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is the interface that the virtual addresses go on.
type Link struct {
	name string
	link netlink.Link
	ifi  *net.Interface
}

// OpenLink finds the interface by name.
func OpenLink(name string) (*Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %v", name, err)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %v", name, err)
	}
	return &Link{name: name, link: l, ifi: ifi}, nil
}

// Name is the interface's name.
func (l *Link) Name() string { return l.name }

// addr is the netlink form of p. IPv6 addresses skip duplicate address
// detection (IFA_F_NODAD): the handover rule already keeps two holders
// apart, and DAD would hold the address unusable ("tentative") for about
// a second after each failover.
func addr(p netip.Prefix) *netlink.Addr {
	ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	a := &netlink.Addr{IPNet: ipn}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// Add puts p on the interface; already being there is not an error.
func (l *Link) Add(p netip.Prefix) error {
	err := netlink.AddrAdd(l.link, addr(p))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %v", p, l.name, err)
	}
	return nil
}

// Remove takes p off the interface; not being there is not an error.
func (l *Link) Remove(p netip.Prefix) error {
	err := netlink.AddrDel(l.link, addr(p))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s from %s: %v", p, l.name, err)
	}
	return nil
}

// Present returns the addresses of s that are on the interface now.
func (l *Link) Present(s Set) (Holding, error) {
	list, err := netlink.AddrList(l.link, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("listing the addresses of %s: %v", l.name, err)
	}
	var h Holding
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for i, p := range s {
			if p.Addr() == ip {
				h = h.With(i)
			}
		}
	}
	return h, nil
}

// Announce tells the link that p has moved here: a gratuitous ARP (IPv4)
// or an unsolicited neighbour advertisement with the override flag (IPv6),
// so that switches and clients update their caches at once instead of
// when their entries expire.
func (l *Link) Announce(p netip.Prefix) error {
	if len(l.ifi.HardwareAddr) == 0 {
		return nil // no link-layer addresses (a tunnel, loopback): nothing to update
	}
	if p.Addr().Is4() {
		return l.gratuitousARP(p.Addr())
	}
	return l.unsolicitedNA(p.Addr())
}

// gratuitousARP broadcasts an ARP request and an ARP reply for ip from
// this interface: some hosts heed only one of the two.
func (l *Link) gratuitousARP(ip netip.Addr) error {
	c, err := arp.Dial(l.ifi)
	if err != nil {
		return fmt.Errorf("gratuitous ARP for %s on %s: %v", ip, l.name, err)
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
		pkt, err := arp.NewPacket(op, l.ifi.HardwareAddr, ip, ethernet.Broadcast, ip)
		if err != nil {
			return fmt.Errorf("gratuitous ARP for %s: %v", ip, err)
		}
		if err := c.WriteTo(pkt, ethernet.Broadcast); err != nil {
			return fmt.Errorf("gratuitous ARP for %s on %s: %v", ip, l.name, err)
		}
	}
	return nil
}

// allNodes is ff02::1, where unsolicited advertisements go (RFC 4861 7.2.6).
var allNodes = netip.MustParseAddr("ff02::1")

// unsolicitedNA sends a neighbour advertisement for ip to all nodes, with
// the override flag so that existing cache entries take the new address.
func (l *Link) unsolicitedNA(ip netip.Addr) error {
	c, _, err := ndp.Listen(l.ifi, ndp.LinkLocal)
	if err != nil {
		// No usable link-local address yet: send from the virtual one.
		c, _, err = ndp.Listen(l.ifi, ndp.Addr(ip.String()))
	}
	if err != nil {
		return fmt.Errorf("neighbour advertisement for %s on %s: %v", ip, l.name, err)
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: l.ifi.HardwareAddr}},
	}
	if err := c.WriteTo(na, nil, allNodes); err != nil {
		return fmt.Errorf("neighbour advertisement for %s on %s: %v", ip, l.name, err)
	}
	return nil
}

// Capabilities the option needs: CAP_NET_ADMIN to add and remove
// addresses, CAP_NET_RAW for the ARP and NDP sockets.
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// MissingCapabilities names the capabilities this process lacks in its
// effective set, read from /proc/self/status; nil when it has them all.
func MissingCapabilities() ([]string, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("reading capabilities: %v", err)
	}
	return missingIn(string(b))
}

// missingIn reads the CapEff line of a /proc/<pid>/status text.
func missingIn(status string) ([]string, error) {
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("reading capabilities: CapEff %q: %v", strings.TrimSpace(v), err)
		}
		var missing []string
		if eff&(1<<capNetAdmin) == 0 {
			missing = append(missing, "CAP_NET_ADMIN")
		}
		if eff&(1<<capNetRaw) == 0 {
			missing = append(missing, "CAP_NET_RAW")
		}
		return missing, nil
	}
	return nil, fmt.Errorf("reading capabilities: no CapEff line in /proc/self/status")
}
