package fault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// newKey is a fresh random shared secret (32 hex digits).
func newKey() string {
	var k [16]byte
	_, _ = rand.Read(k[:])
	return hex.EncodeToString(k[:])
}

// runRotate rolls a key rotation across every Caddy, one node at a time,
// as the README describes it: `accept_keys <new>` onto every node, then
// `key <new>` with `accept_keys <old>`, then accept_keys dropped. After each
// node's POST /load it waits until that node's announcements have reached
// every other node (their sequence numbers moved past the load), the node
// has heard every other one, and every Caddy lists every other live; it
// reports any announcement a node rejected during the step.
//
// Then the negative check: the faulty node jumps straight to another key,
// without the accept_keys step. Its announcements are rejected (bad_mac)
// and it goes stale at every other node, and they at it: the split the
// rolling rotation avoids. It is reported, then the node is given the
// cluster's key back.
func runRotate(ctx context.Context, s *runState) error {
	e := s.e
	nodes := e.allNodes()
	old, next := e.key, newKey()
	e.mu.Lock()
	e.keys = make([]string, len(nodes))
	e.acceptKeys = make([][]string, len(nodes))
	for i := range e.keys {
		e.keys[i] = old
	}
	e.mu.Unlock()
	s.rep.Inject = s.now()
	stages := []struct {
		name   string
		key    string
		accept []string
	}{
		{"accept_keys <new>", old, []string{next}},
		{"key <new>, accept_keys <old>", next, []string{old}},
		{"accept_keys dropped", next, nil},
	}
	var slowest time.Duration
	steps, bad := 0, 0
	for _, st := range stages {
		from := s.now()
		for i, n := range nodes {
			e.mu.Lock()
			e.keys[i], e.acceptKeys[i] = st.key, st.accept
			e.mu.Unlock()
			took, err := s.rotateStep(ctx, i, n)
			steps++
			slowest = max(slowest, took)
			if err != nil {
				bad++
				s.rep.note("rotation step %q on %s: %v", st.name, n.Name(), err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		s.rep.Windows = append(s.rep.Windows, Window{Name: "rotation: " + st.name, From: from, To: s.now()})
	}
	rotEnd := s.now()
	s.rep.note("rotation: %d steps (a POST /load each) in %.1fs, %d with a peer not live or an announcement rejected; slowest step %v (load to every announcement across)",
		steps, (rotEnd - s.rep.Inject).Seconds(), bad, slowest.Round(time.Millisecond))

	if !e.o.RotateSplit {
		s.rep.DuringEnd = s.now()
		return nil
	}
	// The negative check: the faulty node jumps to another key.
	v := e.victim
	before := allRejected(ctx, nodes)
	e.mu.Lock()
	e.keys[v], e.acceptKeys[v] = newKey(), nil
	e.mu.Unlock()
	if err := e.reloadNode(ctx, v); err != nil {
		return err
	}
	e.logf("%s jumped to another key without accept_keys", nodes[v].Name())
	err := s.sleep(ctx, e.o.MaxAge+1500*time.Millisecond)
	after := allRejected(ctx, nodes)
	var states []string
	for i, n := range nodes {
		pv, perr := n.Peers(ctx)
		if perr != nil {
			continue
		}
		if i == v {
			states = append(states, fmt.Sprintf("%s sees %s", n.Name(), pv.Summary()))
		} else if p, ok := pv.Peer(nodes[v].Name()); ok {
			states = append(states, fmt.Sprintf("%s sees it %s", n.Name(), p.State))
		}
	}
	s.rep.note("split check: %s moved to a new key without accept_keys; %.1fs later: rejected %s; %s",
		nodes[v].Name(), (e.o.MaxAge + 1500*time.Millisecond).Seconds(), rejectDelta(before, after), strings.Join(states, "; "))
	// Back into the cluster.
	e.mu.Lock()
	e.keys[v] = e.keys[(v+1)%len(nodes)]
	e.mu.Unlock()
	if rerr := e.reloadNode(ctx, v); rerr != nil {
		return rerr
	}
	t0 := s.now()
	if werr := e.waitAll(ctx, 10*time.Second); werr != nil {
		s.rep.note("after the split check: %v", werr)
	} else {
		s.rep.note("after the split check: %s back with the cluster's key, every node sees every other live %v later", nodes[v].Name(), (s.now() - t0).Round(time.Millisecond))
	}
	s.rep.Windows = append(s.rep.Windows, Window{Name: "split check", From: rotEnd, To: s.now()})
	s.rep.DuringEnd = s.now()
	return err
}

// rotateStep loads Caddy i's configuration as it is now and waits until
// its announcements have reached every other Caddy and theirs it, with
// every Caddy seeing every other live; it returns how long that took, and
// an error naming what failed (a rejected announcement included).
func (s *runState) rotateStep(ctx context.Context, i int, n *cluster.Node) (time.Duration, error) {
	e := s.e
	nodes := e.allNodes()
	name := n.Name()
	// The sequence numbers each Caddy has of i, and i of each: they must
	// move past the load.
	seqOf := map[string]uint64{} // "viewer>peer"
	for _, o := range nodes {
		if pv, err := o.Peers(ctx); err == nil {
			for _, p := range pv.Peers {
				if o == n || p.Name == name {
					seqOf[o.Name()+">"+p.Name] = p.Seq
				}
			}
		}
	}
	before := allRejected(ctx, nodes)
	t0 := time.Now()
	if err := e.reloadNode(ctx, i); err != nil {
		return time.Since(t0), err
	}
	err := cluster.Poll(ctx, 2*e.o.MaxAge+2*time.Second, 50*time.Millisecond, func() error {
		for _, o := range nodes {
			pv, err := o.Peers(ctx)
			if err != nil {
				return err
			}
			for _, other := range nodes {
				p, ok := pv.Peer(other.Name())
				switch {
				case other == o:
					continue
				case !ok || p.State != "live":
					return fmt.Errorf("%s sees %s", o.Name(), pv.Summary())
				case (o == n || other == n) && p.Seq <= seqOf[o.Name()+">"+other.Name()]:
					return fmt.Errorf("%s has not heard %s since the load", o.Name(), other.Name())
				}
			}
		}
		return nil
	})
	took := time.Since(t0)
	if d := rejectDelta(before, allRejected(ctx, nodes)); d != "none" {
		err = errors.Join(err, fmt.Errorf("announcements rejected during the step: %s", d))
	}
	return took, err
}

// reloadNode loads Caddy i's current configuration.
func (e *env) reloadNode(ctx context.Context, i int) error {
	cfg := e.nodeConfig(i)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := e.node(i).Load(rctx, cfg.Caddyfile())
	if err == nil {
		e.mu.Lock()
		e.cfgs[i] = cfg
		e.mu.Unlock()
	}
	return err
}

// waitAll waits until every Caddy sees every other one live.
func (e *env) waitAll(ctx context.Context, timeout time.Duration) error {
	nodes := e.allNodes()
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name())
	}
	return cluster.Poll(ctx, timeout, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			pv, err := n.Peers(ctx)
			if err != nil {
				return err
			}
			if err := pv.SeesAll(names...); err != nil {
				return err
			}
		}
		return nil
	})
}

// allRejected is every Caddy's rejection counters, by node and reason.
func allRejected(ctx context.Context, nodes []*cluster.Node) map[string]int {
	sum := map[string]int{}
	for _, n := range nodes {
		pv, err := n.Peers(ctx)
		if err != nil {
			continue
		}
		for k, c := range pv.Rejected {
			sum[n.Name()+" "+k] += c
		}
	}
	return sum
}

// rejectDelta is what rose between two allRejected, e.g. "node1 bad_mac
// +2", or "none".
func rejectDelta(before, after map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if d := after[k] - before[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
