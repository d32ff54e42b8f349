// Package backhand brings Apache mod_backhand's idea to Caddy: every node of
// a web cluster announces its resources to its peers about once a second,
// and reverse_proxy forwards each request to the peer best able to serve it.
//
// The package holds the backhand app (gathering, announcing, listening and
// the peer table), the `dynamic backhand` upstream source, the
// `backhand_track` handler that counts this node's own requests, and their
// Caddyfile forms.
package backhand

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

func init() {
	caddy.RegisterModule(App{})
}

// Defaults for the app's options, and their bounds.
const (
	defaultCluster             = "default"
	defaultInterval            = time.Second
	minInterval                = 10 * time.Millisecond
	defaultMaxAgeIntervals     = 3           // max_age, in intervals
	defaultEvictAfterIntervals = 60          // evict_after, in intervals,
	minDefaultEvictAfter       = time.Minute // but at least this
	defaultReplayWindow        = 10 * time.Second
	defaultListen              = "udp/:4445"
	defaultMulticastTTL        = 1
	defaultMaxPeers            = 1024
	maxMaxPeers                = 1 << 16
	defaultCapacity            = 256
	defaultResolveInterval     = 30 * time.Second
	minResolveInterval         = time.Second
	defaultAdvertisePort       = "80"
	minKeyLen                  = 16
)

// App is the backhand app: it gathers this node's resources, announces them
// to the peers of its cluster every interval, listens for their
// announcements, and keeps the live table of peers that the `dynamic
// backhand` upstream source reads.
//
// The peer table belongs to the process, not to one config: it survives
// config reloads through the admin API, and so do the node's sequence
// numbers and request counters.
type App struct {
	// Name identifies this node in its cluster; peers see it and
	// byHostname-style filters match on it. At most 64 bytes.
	// Default: the host name.
	Name string `json:"name,omitempty"`

	// Cluster names the cluster; announcements from another cluster are
	// rejected. At most 64 bytes. Default: "default".
	Cluster string `json:"cluster,omitempty"`

	// Advertise is the host:port that peers forward HTTP requests to
	// (mod_backhand's `MulticastStats <myip> ...`). A URL such as
	// http://10.0.0.4:8080 is accepted and reduced to its host:port; the
	// scheme is not announced, so for https set `transport http { tls }` on
	// the forwarding side. Default: the first non-loopback address of this
	// host, port 80.
	Advertise string `json:"advertise,omitempty"`

	// Tags are short labels (at most 8, each at most 32 bytes) so that
	// different machines can do different things, e.g. "cgi", "images".
	Tags []string `json:"tags,omitempty"`

	// Interval is how often this node gathers and announces its figures.
	// Each announcement is sent after the interval plus or minus up to 10%
	// of random jitter, so nodes do not synchronise. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// MaxAge is how long a peer stays live without being heard from; the
	// `dynamic backhand` source uses it unless it sets its own.
	// Default: 3 intervals.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// EvictAfter is how long a silent peer stays in the table (shown as
	// stale) before it is removed. Default: 60 intervals, at least 1m.
	EvictAfter caddy.Duration `json:"evict_after,omitempty"`

	// Listen are the UDP network addresses on which to receive
	// announcements, such as "udp/:4445" or "udp/10.0.0.4:4445". The first
	// also sends them. Default: ["udp/:4445"].
	Listen []string `json:"listen,omitempty"`

	// Peers are unicast destinations as host:port: IP addresses or DNS
	// names. A name may resolve to several addresses (a Kubernetes headless
	// service); each one gets the announcement. Listing this node itself
	// is harmless, so every node can share one list.
	Peers []string `json:"peers,omitempty"`

	// ResolveInterval is how often DNS names in Peers are resolved again.
	// Default: 30s.
	ResolveInterval caddy.Duration `json:"resolve_interval,omitempty"`

	// Multicast are multicast groups to announce to and receive from. Opt-in.
	Multicast []MulticastGroup `json:"multicast,omitempty"`

	// Broadcast are broadcast addresses (host:port) to announce to. Opt-in.
	Broadcast []string `json:"broadcast,omitempty"`

	// Accept are the CIDR ranges (or single IPs) announcements may come
	// from (mod_backhand's AcceptStats); others are dropped before they are
	// parsed. Default: any source.
	Accept []string `json:"accept,omitempty"`

	// AdvertiseAllow are the CIDR ranges (or single IPs) that peers may
	// advertise as their address: an announcement advertising anything
	// else (a DNS name included, since a name may point anywhere) is
	// rejected as advertise_denied. A key holder, or any sender that
	// passes accept without a key, could otherwise point every node's
	// proxy at any address it can reach. This node's own advertise must
	// be inside. Default: any IP address or DNS name.
	AdvertiseAllow []string `json:"advertise_allow,omitempty"`

	// Key is the shared secret that signs and verifies announcements
	// (HMAC-SHA256), at least 16 bytes. It may be a placeholder such as
	// {env.BACKHAND_KEY}. Required unless InsecureNoKey is set.
	Key string `json:"key,omitempty"`

	// AcceptKeys are other shared secrets that announcements, hop markers
	// and byCookie's cookies are accepted with; nothing is signed with
	// them. They rotate the key without splitting the cluster: roll
	// `accept_keys <new>` onto every node, then `key <new>` with
	// `accept_keys <old>`, then drop accept_keys; at every step each node
	// accepts what every other node signs. Same rules as Key.
	AcceptKeys []string `json:"accept_keys,omitempty"`

	// InsecureNoKey runs without a key: announcements are unsigned, and
	// anyone who can reach the listen address can inject peers. Only for
	// closed networks and tests; logged as a warning.
	InsecureNoKey bool `json:"insecure_no_key,omitempty"`

	// ReplayWindow is how far an announcement's send time may be from this
	// node's clock; older (replayed) or future ones are rejected. Peers need
	// clocks synchronised to well within it. Default: 10s.
	ReplayWindow caddy.Duration `json:"replay_window,omitempty"`

	// MaxPeers bounds the peer table, self included, so spoofed or
	// churning node names cannot grow memory: a new name is accepted only
	// if there is room or a stale entry can be evicted. Default: 1024.
	MaxPeers int `json:"max_peers,omitempty"`

	// Capacity is how many requests this node can serve at once; it is
	// announced beside Busy, the requests in flight. Default: 256.
	Capacity int `json:"capacity,omitempty"`

	// Speed is this node's speed relative to a reference core (1000),
	// mod_backhand's arriba: what peers rank it by until they have seen it
	// serve (then the response times they observe decide), and what byLoad
	// and byPower divide by. Default: none (0), counted as 1000. Nothing is
	// measured at start-up: a CPU benchmark is noise on a busy machine
	// (BENCHMARKS.md, rating-noise), evidence is not.
	Speed int `json:"speed,omitempty"`

	// Drain announces this node as draining: peers send it no new requests.
	Drain bool `json:"drain,omitempty"`

	// AppReport reads figures that the local application reports about
	// itself (load, weight, drain), each interval.
	AppReport *AppReportSource `json:"app_report,omitempty"`

	// VIP keeps a set of virtual addresses in service on the live nodes
	// of the cluster, for round-robin DNS (see VirtualAddresses).
	VIP *VirtualAddresses `json:"vip,omitempty"`

	ctx       caddy.Context
	logger    *zap.Logger
	node      *node
	key       []byte   // signs announcements
	secret    []byte   // the shared secret itself, for deriving other keys
	accepted  [][]byte // the accept_keys secrets
	advertise string
	accept    []netip.Prefix
	advAllow  []netip.Prefix
	listen    []caddy.NetworkAddress
	peers     []hostPort
	groups    []multicastDest
	broadcast []netip.AddrPort
	announcer *announcer
	vip       *vipState // the process's vip state, when VIP is set
}

// MulticastGroup is one multicast destination, e.g. mod_backhand's
// `MulticastStats 225.220.221.20:4445,1`.
type MulticastGroup struct {
	// Address is the group and port, e.g. "239.255.44.45:4445". A listen
	// address on the same port with a wildcard host receives from it.
	Address string `json:"address"`

	// TTL is the multicast TTL (hop limit). Default: 1, the local network.
	TTL int `json:"ttl,omitempty"`

	// Interface names the network interface to send and join on.
	// Default: the system's choice.
	Interface string `json:"interface,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "backhand",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision fills defaults, compiles the config and attaches to the
// process-level node state of the cluster.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.setDefaults()
	if err := a.compile(); err != nil {
		return err
	}
	val, _, err := nodes.LoadOrNew(a.Cluster, func() (caddy.Destructor, error) { return newNode(), nil })
	if err != nil {
		return err
	}
	a.node = val.(*node)
	if err := a.provisionVIP(); err != nil {
		return err
	}
	registerMetrics(ctx)
	return nil
}

// Start binds the UDP sockets and starts announcing. The node's shared
// settings (name, keys, limits) change only once the sockets are bound:
// when they cannot be, Caddy keeps the running config, which must not be
// left with this one's settings.
func (a *App) Start() error {
	link, err := a.openVIP()
	if err != nil {
		return err
	}
	an, err := bindAnnouncer(a)
	if err != nil {
		return err
	}
	a.node.table.SetLimits(a.tableLimits())
	a.node.keys.Store(deriveKeys(a.secret, time.Duration(a.ReplayWindow), a.accepted...))
	a.node.table.DropStaleSelf(a.Name)
	an.run()
	a.announcer = an
	latestApp.Store(a)
	a.startVIP(link)
	a.logger.Info("announcing",
		zap.String("node", a.Name),
		zap.String("cluster", a.Cluster),
		zap.String("advertise", a.advertise),
		zap.Strings("tags", a.Tags),
		zap.Duration("interval", time.Duration(a.Interval)),
		zap.Strings("listen", a.Listen),
		zap.Strings("peers", a.Peers),
		zap.Int("multicast_groups", len(a.groups)),
		zap.Int("broadcast", len(a.broadcast)),
		zap.Bool("signed", a.key != nil))
	if a.key == nil {
		a.logger.Warn("announcements are NOT authenticated (insecure_no_key): anyone who reaches the listen address can inject peers")
	}
	return nil
}

// Stop stops announcing and closes the sockets. The peer table stays for
// the next config. When no newer config has started (an orderly stop, not
// a reload), the virtual addresses are released first and the peers told
// at once, so they take them over without waiting for max_age.
func (a *App) Stop() error {
	if a.announcer == nil {
		return nil
	}
	if a.vip != nil && latestApp.Load() == a && a.vip.releaseAll(a, "orderly stop") {
		a.announcer.flushNow(time.Second)
	}
	err := a.announcer.stop()
	a.announcer = nil
	latestApp.CompareAndSwap(a, nil)
	return err
}

// Cleanup releases this config's hold on the node state.
func (a *App) Cleanup() error {
	if a.node == nil {
		return nil
	}
	vipErr := a.cleanupVIP()
	_, err := nodes.Delete(a.Cluster)
	return errors.Join(vipErr, err)
}

func (a *App) tableLimits() *candidacy.Limits {
	return &candidacy.Limits{
		MaxPeers:      a.MaxPeers,
		ReplayWindow:  time.Duration(a.ReplayWindow),
		MaxAge:        time.Duration(a.MaxAge),
		EvictAfter:    time.Duration(a.EvictAfter),
		SelfName:      a.Name,
		SelfAdvertise: a.advertise,
		Incarnation:   a.node.incarnation,
	}
}

// nodes holds the process-level state of each cluster this process is a
// member of, keyed by cluster name. A config reload provisions the new app
// (taking a reference) before cleaning up the old one, so the state lives on.
var nodes = caddy.NewUsagePool()

// node is what outlives a config: the peer table, this process's
// incarnation and sequence numbers, and the counters of its own requests
// and of the announcements it received.
type node struct {
	table       *candidacy.Table
	incarnation uint64
	seq         atomic.Uint64
	stats       localStats
	received    receivedCounts
	decisions   decisions
	draining    atomic.Bool // set through the admin API
	silent      atomic.Bool // a cluster-wide silence (Table.Silent) as last logged
	keys        atomic.Pointer[derivedKeys]
	kick        chan struct{} // asks the send loop to announce now (the vip option's moves)
}

func newNode() *node {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	n := &node{
		table:       candidacy.NewTable(candidacy.Limits{MaxPeers: defaultMaxPeers}),
		incarnation: binary.BigEndian.Uint64(b[:]),
		kick:        make(chan struct{}, 1),
	}
	n.keys.Store(&derivedKeys{hopWindow: defaultReplayWindow})
	return n
}

// derivedKeys are the keys derived from the cluster's shared secret for
// what it authenticates besides announcements; nil without a secret.
type derivedKeys struct {
	cookie    []byte          // byCookie's cookies
	hop       *wire.HopSigner // the hop marker of forwarded requests
	hopWindow time.Duration   // how far a marker's time may be from now: the replay window

	// What accept_keys derive: markers and cookies that verify with them
	// are accepted too.
	acceptedCookies [][]byte
	acceptedHops    []*wire.HopSigner
}

func deriveKeys(secret []byte, hopWindow time.Duration, accepted ...[]byte) *derivedKeys {
	if secret == nil {
		return &derivedKeys{hopWindow: hopWindow}
	}
	k := &derivedKeys{cookie: wire.CookieKey(secret), hop: wire.NewHopSigner(secret), hopWindow: hopWindow}
	for _, s := range accepted {
		k.acceptedCookies = append(k.acceptedCookies, wire.CookieKey(s))
		k.acceptedHops = append(k.acceptedHops, wire.NewHopSigner(s))
	}
	return k
}

// Destruct implements caddy.Destructor; the node holds no OS resources.
func (*node) Destruct() error { return nil }

// hostPort is an unresolved host:port destination.
type hostPort struct {
	host string
	port uint16
}

func (h hostPort) String() string { return net.JoinHostPort(h.host, strconv.Itoa(int(h.port))) }

// multicastDest is a compiled MulticastGroup.
type multicastDest struct {
	group netip.AddrPort
	ttl   int
	ifi   *net.Interface
}

// defaultName is the host name, trimmed to fit the wire format.
func defaultName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "caddy-" + strconv.Itoa(os.Getpid())
	}
	if len(h) > wire.MaxNameLen {
		h = h[:wire.MaxNameLen]
	}
	return h
}

// defaultAdvertiseHost is the first global unicast address of this host
// (IPv4 preferred), or the loopback address when there is none.
func defaultAdvertiseHost() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "127.0.0.1"
	}
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	if v6 != "" {
		return v6
	}
	return "127.0.0.1"
}

// backhandApp returns the configured backhand app, or an error that tells
// the user of module (named as written: "backhand_track", "lb_policy
// backhand" ...) what is wrong: the app is missing, or its own config is
// invalid (then its error, which names the app's option).
func backhandApp(ctx caddy.Context, module string) (*App, error) {
	v, err := ctx.AppIfConfigured("backhand")
	switch {
	case errors.Is(err, caddy.ErrNotConfigured):
		return nil, fmt.Errorf("%s: needs the backhand app: add the `backhand` global option (apps.backhand in JSON)", module)
	case err != nil:
		return nil, fmt.Errorf("%s: the backhand app's config is invalid: %v", module, err)
	}
	return v.(*App), nil
}

// errModule is the error for a bad option of a module other than the app,
// named as the user wrote it: "lb_policy backhand: keep must be ...".
func errModule(module string, format string, args ...any) error {
	return fmt.Errorf(module+": "+format, args...)
}

// errOption is the error for a bad value of one of the app's options:
// "backhand: <option>: <message>".
func errOption(option string, format string, args ...any) error {
	return fmt.Errorf("backhand: %s: "+format, append([]any{option}, args...)...)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*node)(nil)
)
