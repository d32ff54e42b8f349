package backhand

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// setDefaults fills every option left empty with its default (module.go
// names them all).
func (a *App) setDefaults() {
	if a.Name == "" {
		a.Name = defaultName()
	}
	if a.Cluster == "" {
		a.Cluster = defaultCluster
	}
	if a.Interval == 0 {
		a.Interval = caddy.Duration(defaultInterval)
	}
	if a.MaxAge == 0 {
		a.MaxAge = defaultMaxAgeIntervals * a.Interval
	}
	if a.EvictAfter == 0 {
		a.EvictAfter = max(defaultEvictAfterIntervals*a.Interval, caddy.Duration(minDefaultEvictAfter))
	}
	if a.ResolveInterval == 0 {
		a.ResolveInterval = caddy.Duration(defaultResolveInterval)
	}
	if a.ReplayWindow == 0 {
		a.ReplayWindow = caddy.Duration(defaultReplayWindow)
	}
	if len(a.Listen) == 0 {
		a.Listen = []string{defaultListen}
	}
	if a.MaxPeers == 0 {
		a.MaxPeers = defaultMaxPeers
	}
	if a.Capacity == 0 {
		a.Capacity = defaultCapacity
	}
}

// compile turns the options into what the announcer uses (addresses,
// keys), with the defaults in place. Each error names the option and the
// value that is wrong.
func (a *App) compile() error {
	adv, err := parseAdvertise(a.Advertise)
	if err != nil {
		return errOption("advertise", "%v", err)
	}
	a.advertise = adv
	if err := a.compileKey(); err != nil {
		return err
	}
	return a.compileNetwork()
}

// Validate checks the options that compile does not parse. Each error
// names the option and the value that is wrong.
func (a *App) Validate() error {
	if err := a.validateIdentity(); err != nil {
		return err
	}
	if err := a.validateTiming(); err != nil {
		return err
	}
	return a.validateFigures()
}

func (a *App) validateIdentity() error {
	if !wire.ValidName(a.Name) {
		return errOption("name", "%q must be 1-%d bytes of letters, digits, '.', '-' and '_'", a.Name, wire.MaxNameLen)
	}
	if !wire.ValidName(a.Cluster) {
		return errOption("cluster", "%q must be 1-%d bytes of letters, digits, '.', '-' and '_'", a.Cluster, wire.MaxNameLen)
	}
	if len(a.Tags) > wire.MaxTags {
		return errOption("tags", "at most %d tags, got %d", wire.MaxTags, len(a.Tags))
	}
	for _, t := range a.Tags {
		if !wire.ValidTag(t) {
			return errOption("tags", "%q must be 1-%d printable bytes without spaces", t, wire.MaxTagLen)
		}
	}
	return nil
}

// parseAdvertise accepts host:port or an http(s) URL and returns host:port.
func parseAdvertise(s string) (string, error) {
	if s == "" {
		return net.JoinHostPort(defaultAdvertiseHost(), defaultAdvertisePort), nil
	}
	hostport := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return "", fmt.Errorf("%q is not host:port or an http(s) URL", s)
		}
		hostport = u.Host
		if u.Port() == "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			hostport = net.JoinHostPort(u.Hostname(), port)
		}
	}
	if err := wire.CheckAdvertise(hostport); err != nil {
		return "", err
	}
	return hostport, nil
}

func (a *App) validateTiming() error {
	if a.Interval < caddy.Duration(minInterval) {
		return errOption("interval", "must be at least %v, got %v", minInterval, time.Duration(a.Interval))
	}
	if a.MaxAge < a.Interval {
		return errOption("max_age", "must be at least the interval (%v), got %v", time.Duration(a.Interval), time.Duration(a.MaxAge))
	}
	if a.EvictAfter < a.MaxAge {
		return errOption("evict_after", "must be at least max_age (%v), got %v", time.Duration(a.MaxAge), time.Duration(a.EvictAfter))
	}
	if a.ResolveInterval < caddy.Duration(minResolveInterval) {
		return errOption("resolve_interval", "must be at least %v, got %v", minResolveInterval, time.Duration(a.ResolveInterval))
	}
	if a.ReplayWindow < 2*a.Interval {
		return errOption("replay_window", "must be at least two intervals (%v), got %v", time.Duration(2*a.Interval), time.Duration(a.ReplayWindow))
	}
	return nil
}

func (a *App) compileKey() error {
	key := caddy.NewReplacer().ReplaceKnown(a.Key, "")
	switch {
	case a.Key != "" && a.InsecureNoKey:
		return errOption("key", "is set together with insecure_no_key; choose one")
	case a.InsecureNoKey:
		a.key = nil
	case a.Key == "":
		return errOption("key", "is required: set a shared secret of at least %d bytes (e.g. {env.BACKHAND_KEY}), or insecure_no_key to run without one", minKeyLen)
	case len(key) < minKeyLen:
		// Never echo the secret itself.
		return errOption("key", "is %d bytes after replacing placeholders; at least %d are required", len(key), minKeyLen)
	default:
		a.secret = []byte(key)
		a.key = wire.AnnounceKey(a.secret)
	}
	a.accepted = a.accepted[:0]
	for i, k := range a.AcceptKeys {
		k = caddy.NewReplacer().ReplaceKnown(k, "")
		switch {
		case a.InsecureNoKey:
			return errOption("accept_keys", "is set together with insecure_no_key; choose one")
		case len(k) < minKeyLen:
			return errOption("accept_keys", "key %d is %d bytes after replacing placeholders; at least %d are required", i+1, len(k), minKeyLen)
		}
		a.accepted = append(a.accepted, []byte(k))
	}
	return nil
}

// verifiers returns the announcement verifiers of a reading goroutine:
// the key's first, then accept_keys'. Without a key, one nil verifier
// (unsigned announcements).
func (a *App) verifiers() []*wire.Signer {
	vs := []*wire.Signer{wire.NewSigner(a.key)}
	for _, s := range a.accepted {
		vs = append(vs, wire.NewSigner(wire.AnnounceKey(s)))
	}
	return vs
}

func (a *App) compileNetwork() error {
	a.listen = a.listen[:0]
	for _, l := range a.Listen {
		na, err := caddy.ParseNetworkAddressWithDefaults(l, "udp", 4445)
		if err != nil {
			return errOption("listen", "%q: %v", l, err)
		}
		if !strings.HasPrefix(na.Network, "udp") {
			return errOption("listen", "%q: network must be udp, udp4 or udp6, got %q", l, na.Network)
		}
		a.listen = append(a.listen, na)
	}
	a.peers = a.peers[:0]
	for _, p := range a.Peers {
		hp, err := parseHostPort(p)
		if err != nil {
			return errOption("peers", "%v", err)
		}
		a.peers = append(a.peers, hp)
	}
	a.groups = a.groups[:0]
	for _, g := range a.Multicast {
		d, err := a.compileGroup(g)
		if err != nil {
			return err
		}
		a.groups = append(a.groups, d)
	}
	a.broadcast = a.broadcast[:0]
	for _, b := range a.Broadcast {
		ap, err := netip.ParseAddrPort(b)
		if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
			return errOption("broadcast", "%q is not an IPv4 address:port", b)
		}
		a.broadcast = append(a.broadcast, ap)
	}
	a.accept = a.accept[:0]
	for _, c := range a.Accept {
		p, err := parsePrefix(c)
		if err != nil {
			return errOption("accept", "%q is not a CIDR range or IP address", c)
		}
		a.accept = append(a.accept, p)
	}
	a.advAllow = a.advAllow[:0]
	for _, c := range a.AdvertiseAllow {
		p, err := parsePrefix(c)
		if err != nil {
			return errOption("advertise_allow", "%q is not a CIDR range or IP address", c)
		}
		a.advAllow = append(a.advAllow, p)
	}
	if !a.advertiseAllowed(a.advertise) {
		return errOption("advertise_allow", "this node's own advertise %q is outside it %v, so its peers would reject it", a.advertise, a.AdvertiseAllow)
	}
	return nil
}

func (a *App) compileGroup(g MulticastGroup) (multicastDest, error) {
	ap, err := netip.ParseAddrPort(g.Address)
	if err != nil || !ap.Addr().IsMulticast() || ap.Port() == 0 {
		return multicastDest{}, errOption("multicast", "%q is not a multicast group:port", g.Address)
	}
	d := multicastDest{group: ap, ttl: g.TTL}
	if d.ttl == 0 {
		d.ttl = defaultMulticastTTL
	}
	if d.ttl < 1 || d.ttl > 255 {
		return multicastDest{}, errOption("multicast", "%s: ttl must be 1-255, got %d", g.Address, g.TTL)
	}
	if g.Interface != "" {
		ifi, err := net.InterfaceByName(g.Interface)
		if err != nil {
			return multicastDest{}, errOption("multicast", "%s: interface %q: %v", g.Address, g.Interface, err)
		}
		d.ifi = ifi
	}
	if !a.receivesOn(ap.Port()) {
		return multicastDest{}, errOption("multicast", "%s: no listen address on port %d with a wildcard host (e.g. udp/:%d) to receive the group on", g.Address, ap.Port(), ap.Port())
	}
	return d, nil
}

// receivesGroupOn reports whether na is a listen address that receives one
// of the multicast groups, which several processes may share on purpose.
func (a *App) receivesGroupOn(na caddy.NetworkAddress) bool {
	wildcard := na.Host == "" || na.Host == "0.0.0.0" || na.Host == "::"
	for _, g := range a.groups {
		if wildcard && na.StartPort <= uint(g.group.Port()) && uint(g.group.Port()) <= na.EndPort {
			return true
		}
	}
	return false
}

// receivesOn reports whether a wildcard listen address covers port, which a
// multicast group needs to be received.
func (a *App) receivesOn(port uint16) bool {
	for _, na := range a.listen {
		if na.StartPort <= uint(port) && uint(port) <= na.EndPort && (na.Host == "" || na.Host == "0.0.0.0" || na.Host == "::") {
			return true
		}
	}
	return false
}

func (a *App) validateFigures() error {
	if a.MaxPeers < 1 || a.MaxPeers > maxMaxPeers {
		return errOption("max_peers", "must be 1-%d, got %d", maxMaxPeers, a.MaxPeers)
	}
	if a.Capacity < 1 || a.Capacity > 1<<30 {
		return errOption("capacity", "must be 1-%d, got %d", 1<<30, a.Capacity)
	}
	if a.Speed < 0 || a.Speed > 1<<30 {
		return errOption("speed", "must be 0 (none) or 1-%d, got %d", 1<<30, a.Speed)
	}
	if a.AppReport != nil {
		if err := a.AppReport.Validate(); err != nil {
			return fmt.Errorf("backhand: %w", err)
		}
	}
	return nil
}

// parseHostPort accepts "host:port" with an IP address or a DNS name.
func parseHostPort(s string) (hostPort, error) {
	if strings.Contains(s, "://") || strings.Contains(s, "/") {
		return hostPort{}, fmt.Errorf("%q is not host:port (no scheme or path)", s)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return hostPort{}, fmt.Errorf("%q is not host:port", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q: %v", s, err)
	}
	if _, err := netip.ParseAddr(host); err != nil && !wire.ValidDNSName(host) {
		return hostPort{}, fmt.Errorf("%q: %q is neither an IP address nor a DNS name", s, host)
	}
	return hostPort{host: host, port: p}, nil
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("port %q must be 1-65535", s)
	}
	return uint16(p), nil
}

// parsePrefix accepts a CIDR range or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(addr, addr.BitLen()), nil
}

// advertiseAllowed reports whether a peer may advertise hostport under
// advertise_allow: anything without it, else an IP address inside it.
func (a *App) advertiseAllowed(hostport string) bool {
	if len(a.advAllow) == 0 {
		return true
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range a.advAllow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
