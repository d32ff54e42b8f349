package backhand

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-backhand/backhand/internal/cfgargs"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("backhand", parseGlobalOption)
}

// parseGlobalOption sets up the backhand app from the global option. A
// second `backhand` block adds to the first.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, err
		}
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "backhand", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens. Syntax:
//
//	backhand {
//		name        <node name>
//		cluster     <cluster name>
//		advertise   <host:port | http(s)://host:port>
//		tags        <tag...>
//		interval    <duration>
//		max_age     <duration>
//		evict_after <duration>
//		listen      <udp address...>
//		peers       <host:port...>
//		resolve_interval <duration>
//		multicast   <group:port>[,<ttl>] [ttl <n>] [interface <name>]
//		broadcast   <address:port...>
//		accept      <cidr...>
//		key         <secret>
//		insecure_no_key
//		replay_window <duration>
//		max_peers   <n>
//		capacity    <n>
//		speed       <n>
//		drain
//		app_report  file <path> | url <http://127.0.0.1:port/path> [timeout <duration>]
//		vip [<address/prefix...>] {
//			addresses <address/prefix...>
//			interface <name>
//			holders   all | tag <tag>
//			sticky
//		}
//	}
//
// Options that take lists may be repeated; their values add up.
//
// vip keeps virtual addresses (IPv4 and IPv6, with their prefix lengths,
// e.g. 10.0.0.10/24 fd00::10/64) in service on the live nodes, for
// round-robin DNS: `interface` is where they go (required); `holders tag
// <tag>` lets only the nodes with that tag hold them (default: `holders
// all`); `sticky` keeps an address on its holder while the holder lives,
// instead of rebalancing when a node recovers. The addresses may be given
// on the vip line, in the block, or both.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := a.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

func (a *App) unmarshalOption(d *caddyfile.Dispenser) error {
	switch opt := d.Val(); opt {
	case "name":
		return cfgargs.OneString(d, &a.Name)
	case "cluster":
		return cfgargs.OneString(d, &a.Cluster)
	case "advertise":
		return cfgargs.OneString(d, &a.Advertise)
	case "key":
		return cfgargs.OneString(d, &a.Key)
	case "tags":
		return cfgargs.MoreStrings(d, &a.Tags)
	case "listen":
		return cfgargs.MoreStrings(d, &a.Listen)
	case "peers":
		return cfgargs.MoreStrings(d, &a.Peers)
	case "broadcast":
		return cfgargs.MoreStrings(d, &a.Broadcast)
	case "accept":
		return cfgargs.MoreStrings(d, &a.Accept)
	case "advertise_allow":
		return cfgargs.MoreStrings(d, &a.AdvertiseAllow)
	case "accept_keys":
		return cfgargs.MoreStrings(d, &a.AcceptKeys)
	case "interval":
		return cfgargs.OneDuration(d, &a.Interval)
	case "max_age":
		return cfgargs.OneDuration(d, &a.MaxAge)
	case "evict_after":
		return cfgargs.OneDuration(d, &a.EvictAfter)
	case "resolve_interval":
		return cfgargs.OneDuration(d, &a.ResolveInterval)
	case "replay_window":
		return cfgargs.OneDuration(d, &a.ReplayWindow)
	case "max_peers":
		return cfgargs.OneInt(d, &a.MaxPeers)
	case "capacity":
		return cfgargs.OneInt(d, &a.Capacity)
	case "speed":
		return cfgargs.OneInt(d, &a.Speed)
	case "insecure_no_key":
		return cfgargs.Flag(d, &a.InsecureNoKey)
	case "drain":
		return cfgargs.Flag(d, &a.Drain)
	case "multicast":
		return a.unmarshalMulticast(d)
	case "app_report":
		return a.unmarshalAppReport(d)
	case "vip":
		return a.unmarshalVIP(d)
	default:
		return d.Errf("unknown backhand option %q", opt)
	}
}

// unmarshalMulticast reads `multicast <group:port>[,<ttl>] [ttl <n>]
// [interface <name>]`; the comma form is mod_backhand's MulticastStats.
func (a *App) unmarshalMulticast(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	g := MulticastGroup{Address: d.Val()}
	if addr, ttl, ok := strings.Cut(g.Address, ","); ok {
		n, err := strconv.Atoi(ttl)
		if err != nil {
			return d.Errf("multicast %s: ttl %q is not a number", g.Address, ttl)
		}
		g.Address, g.TTL = addr, n
	}
	for d.NextArg() {
		switch key := d.Val(); key {
		case "ttl":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("multicast %s: ttl %q is not a number", g.Address, d.Val())
			}
			g.TTL = n
		case "interface":
			if !d.NextArg() {
				return d.ArgErr()
			}
			g.Interface = d.Val()
		default:
			return d.Errf("multicast %s: unknown argument %q (want ttl or interface)", g.Address, key)
		}
	}
	a.Multicast = append(a.Multicast, g)
	return nil
}

// unmarshalAppReport reads `app_report file <path>` or `app_report url
// <url>`, each with an optional `timeout <duration>`.
func (a *App) unmarshalAppReport(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	src := new(AppReportSource)
	kind := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	switch kind {
	case "file":
		src.File = d.Val()
	case "url":
		src.URL = d.Val()
	default:
		return d.Errf("app_report: want file or url, got %q", kind)
	}
	if d.NextArg() {
		if d.Val() != "timeout" || !d.NextArg() {
			return d.Errf("app_report: want `timeout <duration>` after the %s", kind)
		}
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return d.Errf("app_report: timeout %q: %v", d.Val(), err)
		}
		src.Timeout = caddy.Duration(dur)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	a.AppReport = src
	return nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic backhand {
//		max_age      <duration>
//		tags         <tag...>
//		name         <regexp>
//		exclude_self
//	}
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "max_age":
			if err := cfgargs.OneDuration(d, &u.MaxAge); err != nil {
				return err
			}
		case "tags":
			if err := cfgargs.MoreStrings(d, &u.Tags); err != nil {
				return err
			}
		case "name":
			if err := cfgargs.OneString(d, &u.Name); err != nil {
				return err
			}
		case "exclude_self":
			if err := cfgargs.Flag(d, &u.ExcludeSelf); err != nil {
				return err
			}
		default:
			return d.Errf("unknown dynamic backhand option %q", opt)
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: one
// candidacy function per line, in order, and the policy's own options.
// Syntax:
//
//	lb_policy backhand {
//		<function> [<args...>]
//		...
//		max_age  <duration>
//		predict  off|blend|decay
//		keep     <n>
//		fallback <policy> [<args...>]
//	}
//
// For example `byAge 6s`, `byRandom`, `byLogWindow`, `byLoad 0.5`; see the
// functions' documentation. An empty block runs candidacy.DefaultChain.
func (s *Selection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := s.unmarshalLine(d); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalLine reads one line of the policy's block: its own options,
// or the chain's lines (candidacy.ChainConfig).
func (s *Selection) unmarshalLine(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "keep":
		return cfgargs.OneInt(d, &s.Keep)
	case "fallback":
		if !d.NextArg() {
			return d.ArgErr()
		}
		policy := d.Val()
		mod, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.selection_policies."+policy)
		if err != nil {
			return err
		}
		s.FallbackRaw = caddyconfig.JSONModuleObject(mod, "policy", policy, nil)
		return nil
	default:
		return s.ChainConfig.UnmarshalLine(d)
	}
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Upstreams)(nil)
	_ caddyfile.Unmarshaler = (*Selection)(nil)
)

// unmarshalVIP reads the vip block; a second vip block adds to the first.
func (a *App) unmarshalVIP(d *caddyfile.Dispenser) error {
	if a.VIP == nil {
		a.VIP = new(VirtualAddresses)
	}
	v := a.VIP
	v.Addresses = append(v.Addresses, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "addresses":
			if err := cfgargs.MoreStrings(d, &v.Addresses); err != nil {
				return err
			}
		case "interface":
			if err := cfgargs.OneString(d, &v.Interface); err != nil {
				return err
			}
		case "sticky":
			if err := cfgargs.Flag(d, &v.Sticky); err != nil {
				return err
			}
		case "holders":
			if err := unmarshalHolders(d, v); err != nil {
				return err
			}
		default:
			return d.Errf("unknown vip option %q (addresses, interface, holders, sticky)", opt)
		}
	}
	if len(v.Addresses) == 0 {
		return d.Err("vip: no addresses: list them on the vip line or with `addresses`")
	}
	return nil
}

// unmarshalHolders reads `holders all` or `holders tag <tag>`.
func unmarshalHolders(d *caddyfile.Dispenser, v *VirtualAddresses) error {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "all":
		v.HoldersTag = ""
	case len(args) == 2 && args[0] == "tag":
		v.HoldersTag = args[1]
	default:
		return d.Errf("holders: want `all` or `tag <tag>`, got %q", strings.Join(args, " "))
	}
	return nil
}
