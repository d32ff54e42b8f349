package backhand

import (
	"context"

	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/gather"
	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/internal/vip"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// announcer is the running side of one App: it owns the sockets, sends this
// node's announcement every interval, and feeds received ones to the table.
type announcer struct {
	app    *App
	node   *node
	logger *zap.Logger
	conns  []net.PacketConn
	send   net.PacketConn
	sign   *wire.Signer                     // used by sendLoop only
	dests  atomic.Pointer[[]netip.AddrPort] // unicast peers, resolved

	resolved map[string][]netip.AddrPort // last good addresses per peer host:port
	claimed  []string                    // listen addresses counted in held

	system   *gather.Gatherer
	reporter *appReporter
	latency  latencyEWMA

	rejectLog *rate.Limiter // debug logs of rejected datagrams
	warnMu    sync.Mutex
	warned    map[string]time.Time // when each misconfigured peer was last warned of, by reason and source
	sendLog   *rate.Limiter        // warnings about failed sends
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	flush     chan chan struct{} // announce now and acknowledge (an orderly stop)
}

// bindAnnouncer makes the announcer of app and binds its sockets, without
// starting it: nothing that the running config shares (the node's keys,
// name and limits) changes until run, so a config whose sockets cannot be
// bound leaves the running one as it was.
func bindAnnouncer(app *App) (*announcer, error) {
	an := &announcer{
		app:       app,
		node:      app.node,
		logger:    app.logger,
		sign:      wire.NewSigner(app.key),
		resolved:  map[string][]netip.AddrPort{},
		system:    gather.New(""),
		rejectLog: rate.NewLimiter(rate.Every(time.Second), 10),
		sendLog:   rate.NewLimiter(rate.Every(10*time.Second), 3),
		flush:     make(chan chan struct{}),
	}
	if app.AppReport != nil {
		an.reporter = newAppReporter(*app.AppReport)
	}
	if err := an.listen(); err != nil {
		an.closeConns()
		return nil, err
	}
	return an, nil
}

// run starts announcing and receiving.
func (an *announcer) run() {
	app := an.app
	ctx, cancel := context.WithCancel(context.Background())
	an.cancel = cancel
	an.resolve(ctx) // the first announcement should reach the peers
	for _, c := range an.conns {
		an.wg.Go(func() { an.readLoop(c) })
	}
	an.wg.Go(func() { an.sendLoop(ctx) })
	if slices.ContainsFunc(app.peers, func(h hostPort) bool { return !isIP(h.host) }) {
		an.wg.Go(func() { an.resolveLoop(ctx) })
	}
}

func (an *announcer) stop() error {
	an.cancel()
	err := an.closeConns()
	an.wg.Wait()
	if an.reporter != nil {
		an.reporter.close()
	}
	return err
}

func (an *announcer) closeConns() error {
	var errs []error
	for _, c := range an.conns {
		errs = append(errs, c.Close())
	}
	an.conns = nil
	an.unclaim()
	return errors.Join(errs...)
}

// listen binds every listen address through Caddy's network helpers, which
// set SO_REUSEPORT so a reloaded config can bind while the old one runs.
func (an *announcer) listen() error {
	lc := net.ListenConfig{}
	if len(an.app.broadcast) > 0 {
		lc.Control = setBroadcast
	}
	for _, na := range an.app.listen {
		if err := an.claim(na); err != nil {
			return err
		}
		lns, err := na.ListenAll(context.Background(), lc)
		if err != nil {
			return fmt.Errorf("backhand: listen %s: %v", na, err)
		}
		for _, ln := range lns {
			pc, ok := ln.(net.PacketConn)
			if !ok {
				return fmt.Errorf("backhand: listen %s: not a packet socket", na)
			}
			an.conns = append(an.conns, pc)
			if err := an.joinGroups(pc); err != nil {
				return err
			}
		}
	}
	an.send = an.conns[0]
	return nil
}

// held counts the listen addresses that this process's announcers hold,
// so that a config reload, which binds an address again while the old
// config still holds it, can be told from another process on the same
// address. Caddy binds with SO_REUSEPORT, so such a process would bind
// without an error and silently take part of the announcements.
var held = struct {
	sync.Mutex
	m map[string]int
}{m: map[string]int{}}

// claim checks that no other process listens on na (unless it is shared
// on purpose, to receive a multicast group) and counts it as held.
func (an *announcer) claim(na caddy.NetworkAddress) error {
	key := na.String()
	held.Lock()
	defer held.Unlock()
	if held.m[key] == 0 && !an.app.receivesGroupOn(na) {
		for port := na.StartPort; port <= na.EndPort; port++ {
			probe, err := net.ListenPacket(na.Network, na.JoinHostPort(port-na.StartPort))
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("backhand: listen %s: another process already receives on this address, and would take part of the announcements", na)
			}
			if err == nil {
				_ = probe.Close()
			}
		}
	}
	held.m[key]++
	an.claimed = append(an.claimed, key)
	return nil
}

// unclaim releases what claim counted.
func (an *announcer) unclaim() {
	held.Lock()
	defer held.Unlock()
	for _, key := range an.claimed {
		if held.m[key]--; held.m[key] <= 0 {
			delete(held.m, key)
		}
	}
	an.claimed = nil
}

func setBroadcast(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
	})
	return errors.Join(err, serr)
}

// udpConn digs the *net.UDPConn out of Caddy's wrapper, for socket options.
func udpConn(pc net.PacketConn) *net.UDPConn {
	for {
		switch c := pc.(type) {
		case *net.UDPConn:
			return c
		case interface{ Unwrap() net.PacketConn }:
			pc = c.Unwrap()
		default:
			return nil
		}
	}
}

// joinGroups joins the multicast groups whose port pc is bound to.
func (an *announcer) joinGroups(pc net.PacketConn) error {
	uc := udpConn(pc)
	if uc == nil {
		return nil
	}
	local, ok := uc.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil
	}
	for _, g := range an.app.groups {
		if int(g.group.Port()) != local.Port || !local.IP.IsUnspecified() {
			continue
		}
		grp := &net.UDPAddr{IP: g.group.Addr().AsSlice()}
		var err error
		if g.group.Addr().Is4() {
			err = ipv4.NewPacketConn(uc).JoinGroup(g.ifi, grp)
		} else {
			err = ipv6.NewPacketConn(uc).JoinGroup(g.ifi, grp)
		}
		if err != nil {
			return fmt.Errorf("backhand: multicast %s: joining the group: %v", g.group, err)
		}
	}
	return nil
}

// sendLoop announces at once, then every interval with +-10% jitter, and
// at once when the vip option has moved an address (a kick) or the app
// stops in order (a flush).
func (an *announcer) sendLoop(ctx context.Context) {
	interval := time.Duration(an.app.Interval)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var buf []byte
	for {
		var ack chan struct{}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-an.node.kick:
		case ack = <-an.flush:
		}
		buf = an.announce(ctx, time.Now(), buf[:0])
		if ack != nil {
			close(ack)
		}
		an.evict(time.Now())
		an.node.table.UpdateReference(time.Now())
		jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(interval))
		timer.Reset(interval + jitter)
	}
}

// announce gathers this node's figures, publishes its own table entry and
// sends the datagram to every destination. It returns buf for reuse.
func (an *announcer) announce(ctx context.Context, now time.Time, buf []byte) []byte {
	app := an.app
	a := wire.Announcement{
		Incarnation: an.node.incarnation,
		Seq:         an.node.seq.Add(1),
		SentAt:      now.UnixNano(),
		Cluster:     app.Cluster,
		Node:        app.Name,
		Advertise:   app.advertise,
		Tags:        app.announcedTags(),
		Figures:     an.gather(ctx, now),
	}
	an.node.table.UpdateSelf(&candidacy.Peer{
		Name: a.Node, Advertise: a.Advertise, Tags: a.Tags, Figures: a.Figures,
		Incarnation: a.Incarnation, Seq: a.Seq, SentAt: a.SentAt,
		ReceivedAt: now, FirstSeen: now,
	})
	buf, err := a.Encode(buf, an.sign)
	if err != nil {
		an.logger.Error("encoding announcement", zap.Error(err))
		return buf
	}
	for _, d := range *an.destinations() {
		an.sendTo(buf, d)
	}
	for _, g := range app.groups {
		an.setMulticast(g)
		an.sendTo(buf, g.group)
	}
	for _, b := range app.broadcast {
		an.sendTo(buf, b)
	}
	an.node.stats.sent.Add(1)
	return buf
}

// flushNow has the send loop announce at once, and waits for it up to
// timeout.
func (an *announcer) flushNow(timeout time.Duration) {
	ack := make(chan struct{})
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case an.flush <- ack:
	case <-t.C:
		return
	}
	select {
	case <-ack:
	case <-t.C:
	}
}

func (an *announcer) sendTo(buf []byte, to netip.AddrPort) {
	_, err := an.send.WriteTo(buf, net.UDPAddrFromAddrPort(to))
	if err != nil && an.sendLog.Allow() {
		an.logger.Warn("sending announcement", zap.Stringer("to", to), zap.Error(err))
	}
}

func (an *announcer) setMulticast(g multicastDest) {
	uc := udpConn(an.send)
	if uc == nil {
		return
	}
	if g.group.Addr().Is4() {
		pc := ipv4.NewPacketConn(uc)
		_ = pc.SetMulticastTTL(g.ttl)
		if g.ifi != nil {
			_ = pc.SetMulticastInterface(g.ifi)
		}
		return
	}
	pc := ipv6.NewPacketConn(uc)
	_ = pc.SetMulticastHopLimit(g.ttl)
	if g.ifi != nil {
		_ = pc.SetMulticastInterface(g.ifi)
	}
}

// gather collects this node's figures for one announcement.
func (an *announcer) gather(ctx context.Context, now time.Time) Figures {
	app := an.app
	var sys gather.Sample
	if err := an.system.Sample(now, &sys); err != nil && an.sendLog.Allow() {
		an.logger.Warn("gathering system figures", zap.Error(err))
	}
	f := Figures{
		Load1000:    sys.Load1000,
		CPUMilli:    sys.CPUMilli,
		CPUIdle1000: sys.CPUIdle1000,
		MemTotal:    sys.MemTotal,
		MemAvail:    sys.MemAvail,
	}
	st := &an.node.stats
	f.Busy = uint32(max(st.busy.Load(), 0))
	f.Capacity = uint32(app.Capacity)
	f.LatencyMicros = an.latency.update(st, now)
	f.Forwarded = st.forwarded.Load()
	f.Speed = uint32(app.Speed)
	f.Draining = app.Drain || an.node.draining.Load()
	if an.reporter != nil {
		rctx, cancel := context.WithTimeout(ctx, time.Duration(app.Interval)/2)
		rep, err := an.reporter.read(rctx)
		cancel()
		if err != nil {
			if an.sendLog.Allow() {
				an.logger.Warn("reading the application's report", zap.Error(err))
			}
		} else {
			rep.apply(&f)
		}
	}
	return f
}

// evict removes peers silent for too long, and logs them, every change
// of a peer's state (stale, back, draining) and the start and end of a
// cluster-wide silence, through which peers that answer this node's
// requests stay live (see candidacy.Table.Silent).
func (an *announcer) evict(now time.Time) {
	for _, p := range an.node.table.Sweep(now) {
		an.logger.Info("peer evicted", zap.String("peer", p.Name), zap.Duration("silent", p.Age(now)))
	}
	if silent := an.node.table.Silent(now); an.node.silent.Swap(silent) != silent {
		if silent {
			an.logger.Warn("most peers silent for longer than max_age: announcements are likely lost on this node's side; peers that answer its requests stay live")
		} else {
			an.logger.Info("peers heard again: the cluster-wide silence ended")
		}
	}
	maxAge := time.Duration(an.app.MaxAge)
	for _, s := range an.node.table.Peers() {
		p := s.Peer()
		state := peerState(s, now, maxAge)
		prev, changed := s.MarkState(state)
		if !changed {
			continue // unchanged, logged by another announcer, or just joined (logged on receipt)
		}
		an.logStateChange(p, prev, state, now)
	}
}

func (an *announcer) logStateChange(p *candidacy.Peer, from, to string, now time.Time) {
	fields := []zap.Field{zap.String("peer", p.Name), zap.String("from", from), zap.String("to", to)}
	switch {
	case to == "stale":
		an.logger.Warn("peer went stale", append(fields, zap.Duration("silent", p.Age(now)))...)
	case from == "stale":
		an.logger.Info("peer came back", fields...)
	case to == "draining":
		an.logger.Info("peer is draining", fields...)
	default:
		an.logger.Info("peer state changed", fields...)
	}
}

// readLoop receives datagrams until the socket is closed.
func (an *announcer) readLoop(pc net.PacketConn) {
	buf := make([]byte, wire.MaxDatagram+1) // one more byte detects oversized datagrams
	vs := an.app.verifiers()
	var a wire.Announcement
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return // Caddy's shared-socket Close on non-Linux sets a deadline
			}
			continue
		}
		an.receive(buf[:n], addrPort(from), vs, &a, time.Now())
	}
}

// decodeWithAny decodes b verified by the first of vs, or, when its MAC
// does not match, by one of the others (keys being rotated in or out).
func decodeWithAny(a *wire.Announcement, b []byte, vs []*wire.Signer) error {
	err := a.Decode(b, vs[0])
	for _, v := range vs[1:] {
		if wire.ReasonOf(err) != wire.BadMAC {
			break
		}
		err = a.Decode(b, v)
	}
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// receive checks one datagram and takes it into the table.
func (an *announcer) receive(b []byte, from netip.AddrPort, vs []*wire.Signer, a *wire.Announcement, now time.Time) {
	counts := &an.node.received
	if len(an.app.accept) > 0 && !slices.ContainsFunc(an.app.accept, func(p netip.Prefix) bool { return p.Contains(from.Addr()) }) {
		an.rejected(counts.countReject(rejectACL), from, nil)
		return
	}
	if err := decodeWithAny(a, b, vs); err != nil {
		an.rejected(counts.countReject(reasonOf(err)), from, nil)
		return
	}
	if a.Cluster != an.app.Cluster {
		an.rejected(counts.countReject(rejectWrongCluster), from, a)
		return
	}
	if a.Advertise != "" && !an.app.advertiseAllowed(a.Advertise) {
		an.rejected(counts.countReject(rejectAdvertiseDenied), from, a)
		return
	}
	joined, err := an.node.table.Accept(a, from, now)
	if err == nil {
		counts.accepts.Add(1)
		if an.app.vip != nil && slices.ContainsFunc(a.Tags, vip.IsTag) {
			an.app.vip.poke() // a peer's holdings may have changed: evaluate now
		}
	}
	switch {
	case errors.Is(err, candidacy.ErrOwn):
	case err != nil:
		an.rejected(counts.countReject(reasonOf(err)), from, a)
	case joined:
		an.logger.Info("peer joined", zap.String("peer", a.Node), zap.String("advertise", a.Advertise), zap.Stringer("from", from))
	}
}

// rejected logs a rejection at debug level, rate-limited so that a flood
// cannot flood the log. Counting is receivedCounts' job.
func (an *announcer) rejected(r rejectReason, from netip.AddrPort, a *wire.Announcement) {
	if a != nil && misconfigured(r) {
		an.warnMisconfigured(r, from, a)
		return
	}
	if !an.logger.Core().Enabled(zap.DebugLevel) || !an.rejectLog.Allow() {
		return
	}
	fields := []zap.Field{zap.String("reason", r.String()), zap.Stringer("from", from)}
	if a != nil {
		fields = append(fields, zap.String("node", a.Node), zap.String("cluster", a.Cluster))
	}
	an.logger.Debug("announcement rejected", fields...)
}

// misconfigured reports whether a rejection points at a peer whose config
// or clock disagrees with this node's (rather than at noise or a flood),
// so that an operator should hear of it.
func misconfigured(r rejectReason) bool {
	switch r {
	case rejectOutOfWindow, rejectWrongCluster, rejectAdvertiseDenied, rejectDuplicateID:
		return true
	}
	return false
}

// warnMisconfigured logs, at warn level and at most once per interval for
// each reason and source, why a peer's announcements are refused: a clock
// outside replay_window (with by how much), another cluster, an address
// outside advertise_allow, or this node's own name.
func (an *announcer) warnMisconfigured(r rejectReason, from netip.AddrPort, a *wire.Announcement) {
	now := time.Now()
	key := r.String() + " " + from.Addr().String()
	an.warnMu.Lock()
	if an.warned == nil || len(an.warned) > 1024 {
		an.warned = map[string]time.Time{} // a flood of sources: forget, rather than grow
	}
	last, seen := an.warned[key]
	if seen && now.Sub(last) < time.Duration(an.app.Interval) {
		an.warnMu.Unlock()
		return
	}
	an.warned[key] = now
	an.warnMu.Unlock()
	fields := []zap.Field{zap.String("reason", r.String()), zap.Stringer("from", from), zap.String("node", a.Node), zap.String("cluster", a.Cluster)}
	switch r {
	case rejectOutOfWindow:
		skew := time.Unix(0, a.SentAt).Sub(now)
		fields = append(fields, zap.Duration("clock_ahead_by", skew), zap.Duration("replay_window", time.Duration(an.app.ReplayWindow)))
		an.logger.Warn("announcements rejected: the peer's clock is outside replay_window of this node's (synchronise the clocks)", fields...)
	case rejectWrongCluster:
		an.logger.Warn("announcements rejected: the peer announces another cluster", fields...)
	case rejectAdvertiseDenied:
		fields = append(fields, zap.String("advertise", a.Advertise), zap.Strings("advertise_allow", an.app.AdvertiseAllow))
		an.logger.Warn("announcements rejected: the peer advertises an address outside advertise_allow", fields...)
	case rejectDuplicateID:
		an.logger.Warn("announcements rejected: another process announces this node's name", fields...)
	}
}

func (an *announcer) destinations() *[]netip.AddrPort {
	if d := an.dests.Load(); d != nil {
		return d
	}
	return &[]netip.AddrPort{}
}

// resolveLoop re-resolves DNS peer names so that a changing set of
// addresses (a Kubernetes headless service) is followed.
func (an *announcer) resolveLoop(ctx context.Context) {
	t := time.NewTicker(time.Duration(an.app.ResolveInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			an.resolve(ctx)
		}
	}
}

// resolve turns the peer list into addresses. A name that fails to resolve
// keeps its previous addresses, so a DNS hiccup does not cut the cluster.
func (an *announcer) resolve(ctx context.Context) {
	var out []netip.AddrPort
	for _, hp := range an.app.peers {
		if addr, err := netip.ParseAddr(hp.host); err == nil {
			out = append(out, netip.AddrPortFrom(addr.Unmap(), hp.port))
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", hp.host)
		cancel()
		if err != nil {
			an.logger.Warn("resolving peer; keeping its previous addresses", zap.String("peer", hp.host), zap.Error(err))
		} else {
			aps := make([]netip.AddrPort, 0, len(addrs))
			for _, addr := range addrs {
				aps = append(aps, netip.AddrPortFrom(addr.Unmap(), hp.port))
			}
			an.resolved[hp.String()] = aps
		}
		out = append(out, an.resolved[hp.String()]...)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	out = slices.Compact(out)
	an.dests.Store(&out)
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}
