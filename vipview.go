package backhand

// What the status page, GET /backhand/peers and the metrics show of the
// vip option.

import (
	"slices"

	"github.com/caddy-backhand/backhand/internal/vip"
)

// VIPView is the vip option's part of PeersView.
type VIPView struct {
	Interface  string `json:"interface"`
	Sticky     bool   `json:"sticky"`
	HoldersTag string `json:"holders_tag,omitempty"`
	// Error is why the option is refused (a missing capability); then
	// this node holds no address and takes no part.
	Error     string           `json:"error,omitempty"`
	Addresses []VIPAddressView `json:"addresses"`
	// Acquired and Released count this process's moves.
	Acquired uint64 `json:"acquired"`
	Released uint64 `json:"released"`
}

// VIPAddressView is one virtual address.
type VIPAddressView struct {
	Address string `json:"address"`
	// Holders are the nodes that hold it, by this node's own state and
	// the live peers' announcements: one, or two for a moment during a
	// handover or after a partition, none until its owner acquires it.
	Holders []string `json:"holders"`
	// Owner is the node that should hold it, by this node's last
	// assignment.
	Owner string `json:"owner"`
}

// vipView builds the VIPView of app, nil without the option.
func vipViewOf(app *App) *VIPView {
	if app.vip == nil || app.VIP == nil {
		return nil
	}
	st := app.vip
	v := &VIPView{
		Interface:  app.VIP.Interface,
		Sticky:     app.VIP.Sticky,
		HoldersTag: app.VIP.HoldersTag,
		Addresses:  []VIPAddressView{},
		Acquired:   st.acquired.Load(),
		Released:   st.released.Load(),
	}
	if msg := st.disabled.Load(); msg != nil {
		v.Error = *msg
	}
	snap := st.snapshot.Load()
	for i, p := range app.VIP.set {
		av := VIPAddressView{Address: p.String(), Holders: []string{}}
		if snap != nil && i < len(snap.set) && snap.set[i] == p {
			av.Owner = snap.owners[i]
			av.Holders = append(av.Holders, snap.holders[i]...)
		}
		v.Addresses = append(v.Addresses, av)
	}
	return v
}

// heldBy lists the addresses of a peer's holdings tag, for its row.
func heldBy(app *App, tags []string) []string {
	if app.VIP == nil {
		return nil
	}
	h, ok := app.VIP.set.ParseTag(tags)
	if !ok {
		return nil
	}
	var out []string
	for i, p := range app.VIP.set {
		if h.Has(i) {
			out = append(out, p.String())
		}
	}
	return out
}

// withoutVIPTags drops holdings tags from a peer's tags: they are shown
// as the addresses it holds, not as tags.
func withoutVIPTags(tags []string) []string {
	if !slices.ContainsFunc(tags, vip.IsTag) {
		return tags
	}
	return slices.DeleteFunc(slices.Clone(tags), vip.IsTag)
}
