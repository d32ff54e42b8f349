package backhand

import (
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-backhand/backhand/internal/vip"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// VirtualAddresses keeps a set of virtual addresses in service on the
// live nodes of the cluster (mod_backhand's companion Wackamole; what
// keepalived's VRRP does beside HAProxy): give every address to
// round-robin DNS, and when a node dies another one adds its address
// within max_age, so no share of the clients fails until DNS changes.
//
// Every node computes alone, from its peer table, which node should hold
// each address: rendezvous hashing of (address, node), balanced so that
// each node holds as many as any other within one. Nodes announce what
// they hold (in a tag of their announcement), so a node adds an address
// only once no live node holds it, and removes one as soon as a live peer
// should hold it. A node that adds an address sends a gratuitous ARP
// (IPv4) or an unsolicited neighbour advertisement (IPv6).
//
// Needs CAP_NET_ADMIN and CAP_NET_RAW: without them the option is refused
// at start-up with an error in the log that names the missing capability,
// and the rest of the app runs. Linux only.
type VirtualAddresses struct {
	// Addresses are the virtual addresses with their prefix lengths, such
	// as "10.0.0.10/24" or "fd00::10/64", at most 64. Every node of the
	// cluster must list the same set, in any order: a node whose set
	// differs takes no part in the others' assignment.
	Addresses []string `json:"addresses,omitempty"`

	// Interface is the network interface to add the addresses to, such
	// as "eth0". Required; it must exist when the app starts.
	Interface string `json:"interface,omitempty"`

	// HoldersTag limits the holders to the nodes that carry this tag (see
	// tags). Default: every node with this option.
	HoldersTag string `json:"holders_tag,omitempty"`

	// Sticky keeps each address on its holder for as long as the holder
	// is live: a node that joins or recovers takes only addresses that
	// nobody holds. Fewer moves, but the spread may become uneven.
	// Default: balanced, a recovered node takes back just enough
	// addresses to even the spread within one.
	Sticky bool `json:"sticky,omitempty"`

	set vip.Set
}

// compile checks the option; each error names what is wrong.
func (v *VirtualAddresses) compile(tags []string) error {
	set, err := vip.ParseSet(v.Addresses)
	if err != nil {
		return errOption("vip", "addresses: %v", err)
	}
	v.set = set
	switch {
	case v.Interface == "":
		return errOption("vip", "interface is required: the network interface to add the addresses to, such as eth0")
	case strings.ContainsAny(v.Interface, "/ \t") || len(v.Interface) > 15:
		return errOption("vip", "interface %q is not an interface name", v.Interface)
	case v.HoldersTag != "" && !wire.ValidTag(v.HoldersTag):
		return errOption("vip", "holders tag %q must be 1-%d printable bytes without spaces", v.HoldersTag, wire.MaxTagLen)
	case len(tags) >= wire.MaxTags:
		return errOption("vip", "needs one of the %d tags of an announcement to announce the addresses it holds: use at most %d tags", wire.MaxTags, wire.MaxTags-1)
	}
	for _, t := range tags {
		if vip.IsTag(t) {
			return errOption("tags", "%q: tags starting with \"vip:\" are reserved for the vip option", t)
		}
	}
	return nil
}

// provisionVIP takes this config's reference to the process's vip state.
func (a *App) provisionVIP() error {
	if a.VIP == nil {
		return nil
	}
	if err := a.VIP.compile(a.Tags); err != nil {
		return err
	}
	val, _, err := vipStates.LoadOrNew(a.Cluster, func() (caddy.Destructor, error) { return newVIPState(), nil })
	if err != nil {
		return err
	}
	a.vip = val.(*vipState)
	return nil
}

// cleanupVIP drops this config's reference; the last one releases the
// addresses (the option was removed, or the process stops).
func (a *App) cleanupVIP() error {
	if a.vip == nil {
		return nil
	}
	_, err := vipStates.Delete(a.Cluster)
	return err
}

// openVIP checks what the option needs before the app starts: the
// capabilities (missing ones refuse the option, not the app) and the
// interface (missing: the config is wrong, the app fails to start).
func (a *App) openVIP() (*vip.Link, error) {
	if a.vip == nil {
		return nil, nil
	}
	missing, err := vip.MissingCapabilities()
	if err == nil && len(missing) > 0 {
		err = fmt.Errorf("missing capability %s: grant it (e.g. AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW in the systemd unit, or setcap cap_net_admin,cap_net_raw+ep on the binary)", strings.Join(missing, " and "))
	}
	if err != nil {
		msg := "vip option refused: " + err.Error()
		a.vip.disabled.Store(&msg)
		a.logger.Error("vip option refused; the rest of the app runs", zap.Error(err))
		return nil, nil
	}
	link, err := vip.OpenLink(a.VIP.Interface)
	if err != nil {
		return nil, errOption("vip", "%v", err)
	}
	return link, nil
}

// startVIP hands the state to this config and starts the loop if it is
// not running yet.
func (a *App) startVIP(link *vip.Link) {
	if a.vip == nil || link == nil {
		return
	}
	a.vip.disabled.Store(nil)
	a.vip.use(&vipRun{app: a, cfg: a.VIP, link: link})
}

// announcedTags are the tags this node announces: the configured ones,
// plus the holdings tag while the vip option runs.
func (a *App) announcedTags() []string {
	if a.vip == nil {
		return a.Tags
	}
	t := a.vip.tag.Load()
	if t == nil {
		return a.Tags
	}
	return append(slices.Clip(a.Tags), *t)
}

// kickAnnouncer asks the running send loop to announce now, so that a
// release reaches the peers at once instead of within one interval.
func kickAnnouncer(n *node) {
	select {
	case n.kick <- struct{}{}:
	default: // a kick is pending already
	}
}
