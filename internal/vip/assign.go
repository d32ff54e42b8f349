// Package vip keeps a set of virtual addresses in service on the live
// nodes of a backhand cluster, as mod_backhand's companion Wackamole did:
// every node computes, alone and from the same view of the peer table,
// which node should hold each address, and adds or removes the addresses
// it should or should not hold. There is no coordinator and no vote.
//
// This file is the pure part: the address set, the holdings each node
// announces, the assignment and the handover rule. The network side
// (netlink, gratuitous ARP, unsolicited neighbour advertisements) is in
// link_linux.go.
package vip

import (
	"fmt"
	"hash/fnv"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
)

// MaxAddresses is the largest set: holdings are a 64-bit mask, so that
// they fit one announcement tag.
const MaxAddresses = 64

// Set is a set of virtual addresses with their prefix lengths, sorted so
// that every node numbers them alike whatever order its config lists them
// in: holdings refer to addresses by their index in the set.
type Set []netip.Prefix

// ParseSet parses addresses such as "10.0.0.10/24" or "fd00::10/64". A
// bare address, a network address with host bits, a duplicate address and
// more than MaxAddresses are errors that name the value.
func ParseSet(addrs []string) (Set, error) {
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no addresses")
	}
	if len(addrs) > MaxAddresses {
		return nil, fmt.Errorf("at most %d addresses, got %d", MaxAddresses, len(addrs))
	}
	s := make(Set, 0, len(addrs))
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address with a prefix length (e.g. 10.0.0.10/24 or fd00::10/64)", a)
		}
		if err := checkUsable(p); err != nil {
			return nil, fmt.Errorf("%q: %v", a, err)
		}
		for _, q := range s {
			if q.Addr() == p.Addr() {
				return nil, fmt.Errorf("%q: address listed twice (also as %s)", a, q)
			}
		}
		s = append(s, p)
	}
	slices.SortFunc(s, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return s, nil
}

// checkUsable refuses addresses that cannot serve clients as a unicast
// address on a shared link.
func checkUsable(p netip.Prefix) error {
	a := p.Addr()
	switch {
	case a.Zone() != "":
		return fmt.Errorf("a zone is not allowed")
	case a.Is4In6():
		return fmt.Errorf("write IPv4 addresses in dotted form")
	case !a.IsGlobalUnicast():
		return fmt.Errorf("not a unicast address that clients can reach")
	case a.Is4() && p.Bits() < 31 && p.Masked().Addr() == a:
		return fmt.Errorf("is the network address of its prefix")
	}
	return nil
}

// ID is a short digest of the set: nodes announce it with their holdings,
// and a node ignores the holdings of a node whose set differs, since the
// indices would not mean the same addresses.
func (s Set) ID() string {
	h := fnv.New32a()
	for _, p := range s {
		h.Write([]byte(p.String()))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%04x", h.Sum32()&0xffff)
}

// Holding is a set of indices into a Set: bit i is address i.
type Holding uint64

// Has reports whether h holds address i.
func (h Holding) Has(i int) bool { return h&(1<<uint(i)) != 0 }

// With returns h with address i.
func (h Holding) With(i int) Holding { return h | 1<<uint(i) }

// Without returns h without address i.
func (h Holding) Without(i int) Holding { return h &^ (1 << uint(i)) }

// Count is how many addresses h holds.
func (h Holding) Count() int { return bits.OnesCount64(uint64(h)) }

// tagPrefix starts the announcement tag that carries a node's holdings.
const tagPrefix = "vip:"

// Tag is the announcement tag that tells peers which addresses of set s
// this node holds: "vip:<set id>:<holding in hex>", at most 25 bytes, so
// it fits a tag (32 bytes) and rides in announcements that nodes without
// this feature decode unchanged. Its presence also says that the node
// takes part: a node that cannot manage addresses sends none and is never
// assigned one.
func (s Set) Tag(h Holding) string {
	return fmt.Sprintf("%s%s:%x", tagPrefix, s.ID(), uint64(h))
}

// IsTag reports whether a tag is a holdings tag, which the status page
// shows apart from the operator's tags.
func IsTag(tag string) bool { return strings.HasPrefix(tag, tagPrefix) }

// ParseTag reads a holdings tag of set s among tags. ok is false when
// there is none or it is of another set (a node configured otherwise);
// holdings beyond the set's size are dropped. Tags come from the network:
// nothing here panics on any input.
func (s Set) ParseTag(tags []string) (h Holding, ok bool) {
	want := tagPrefix + s.ID() + ":"
	for _, t := range tags {
		rest, found := strings.CutPrefix(t, want)
		if !found || rest == "" || len(rest) > 16 {
			continue
		}
		var v uint64
		for _, c := range []byte(rest) {
			d, valid := hexDigit(c)
			if !valid {
				return 0, false
			}
			v = v<<4 | uint64(d)
		}
		return Holding(v) & s.all(), true
	}
	return 0, false
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// all is the holding of every address of s.
func (s Set) all() Holding {
	if len(s) >= 64 {
		return ^Holding(0)
	}
	return Holding(1)<<uint(len(s)) - 1
}

// Member is a node that may hold addresses: live, not draining, taking
// part (it announces a holdings tag of the same set) and allowed by the
// holders option. Holds is what it announced holding.
type Member struct {
	Name  string
	Holds Holding
}

// score is the rendezvous weight of (address, node): the address goes
// preferably to the node of highest score, so that most addresses stay
// where they are when a node joins or leaves.
func score(addr netip.Prefix, node string) uint64 {
	h := fnv.New64a()
	b, _ := addr.Addr().MarshalBinary()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(node))
	return mix(h.Sum64())
}

// mix is splitmix64's finaliser: FNV alone spreads close names poorly.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// Assign returns the owner of each address of s among members (by name;
// "" when there are none). Every node computes it alone; nodes that see
// the same members and holdings get the same answer.
//
// Current holders keep their addresses first, so that a change of
// membership moves as few addresses as it must. Balanced (sticky false):
// no node owns more than one address above any other, so a recovered node
// takes back exactly what restores that balance. Sticky: a holder keeps
// what it holds whatever the balance; only addresses that nobody holds
// are placed, each on the least loaded member.
func Assign(s Set, members []Member, sticky bool) []string {
	owners := make([]string, len(s))
	if len(members) == 0 {
		return owners
	}
	members = sortedMembers(members)
	c := newCapacity(len(s), len(members), sticky)
	owner := make([]int, len(s))
	for i := range owner {
		owner[i] = -1
	}
	// Keep current holders, the strongest claims first, so that a node
	// over its share gives up its weakest addresses.
	for _, p := range pairs(s, members, func(a, m int) bool { return members[m].Holds.Has(a) }) {
		if owner[p.addr] < 0 && c.canTake(p.member) {
			owner[p.addr] = p.member
			c.take(p.member)
		}
	}
	if sticky {
		placeLeastLoaded(s, members, owner, c)
	} else {
		for _, p := range pairs(s, members, func(a, _ int) bool { return owner[a] < 0 }) {
			if owner[p.addr] < 0 && c.canTake(p.member) {
				owner[p.addr] = p.member
				c.take(p.member)
			}
		}
	}
	for a, m := range owner {
		if m >= 0 {
			owners[a] = members[m].Name
		}
	}
	return owners
}

// sortedMembers orders members by name and drops duplicate names (a
// table never has two, but the function must not depend on it).
func sortedMembers(members []Member) []Member {
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(ms, func(a, b Member) bool { return a.Name == b.Name })
}

// placeLeastLoaded gives each unowned address, in set order, to the member
// that owns fewest, the highest score breaking ties.
func placeLeastLoaded(s Set, members []Member, owner []int, c *capacity) {
	for a := range s {
		if owner[a] >= 0 {
			continue
		}
		best := -1
		var bestScore uint64
		for m := range members {
			sc := score(s[a], members[m].Name)
			if best < 0 || c.count[m] < c.count[best] || (c.count[m] == c.count[best] && sc > bestScore) {
				best, bestScore = m, sc
			}
		}
		owner[a] = best
		c.take(best)
	}
}

// capacity enforces balance within one: with A addresses over N members,
// every member owns A/N, and A%N of them one more.
type capacity struct {
	count  []int
	base   int
	extra  int // members that may own base+1
	sticky bool
}

func newCapacity(addrs, members int, sticky bool) *capacity {
	return &capacity{count: make([]int, members), base: addrs / members, extra: addrs % members, sticky: sticky}
}

func (c *capacity) canTake(m int) bool {
	return c.sticky || c.count[m] < c.base || (c.count[m] == c.base && c.extra > 0)
}

func (c *capacity) take(m int) {
	if !c.sticky && c.count[m] == c.base {
		c.extra--
	}
	c.count[m]++
}

// pair is one (address, member) claim with its rendezvous score.
type pair struct {
	score        uint64
	addr, member int
}

// pairs lists the claims that keep admits, strongest first; ties (equal
// scores, practically never) go by address then member index, so the
// order is the same on every node.
func pairs(s Set, members []Member, keep func(addr, member int) bool) []pair {
	var ps []pair
	for a := range s {
		for m := range members {
			if keep(a, m) {
				ps = append(ps, pair{score(s[a], members[m].Name), a, m})
			}
		}
	}
	slices.SortFunc(ps, func(x, y pair) int {
		switch {
		case x.score != y.score:
			if x.score > y.score {
				return -1
			}
			return 1
		case x.addr != y.addr:
			return x.addr - y.addr
		}
		return x.member - y.member
	})
	return ps
}

// Others is what the other live nodes announce holding.
type Others struct {
	Active   Holding // held by live nodes that are not draining
	Draining Holding // held by live nodes that are draining: they hand over
}

// All is every address another live node holds.
func (o Others) All() Holding { return o.Active | o.Draining }

// Plan is the handover rule: what node self should add and remove, given
// the owners from Assign, what self holds, what the other live nodes
// announce holding, and whether self is draining.
//
// Against two holders at once while views differ, self acquires an
// address it owns only once no live, non-draining node announces holding
// it: the previous holder has released it, or gone stale. Self releases
// an address as soon as a live node other than itself owns it. An address
// that no member can own (all draining, say) stays where it is: held is
// better than unserved.
//
// A draining holder is the exception, since it leaves on purpose and can
// wait: the owner adds the address while the draining node still has it,
// and the draining node removes it once it sees the owner hold it. The
// address is on two nodes for about one announcement, and never on none,
// so a drain fails no request.
func Plan(owners []string, self string, held Holding, others Others, draining bool) (acquire, release Holding) {
	for a, o := range owners {
		switch {
		case o == self && !held.Has(a) && !others.Active.Has(a):
			acquire = acquire.With(a)
		case o != self && o != "" && held.Has(a) && (!draining || others.Active.Has(a)):
			release = release.With(a)
		}
	}
	return acquire, release
}
