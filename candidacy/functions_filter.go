package candidacy

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/internal/cfgargs"
)

// The candidacy functions that filter: they drop candidates and keep the
// order of the rest. Each is a module `backhand.functions.<name>`, written
// in `lb_policy backhand { ... }` or `backhand { ... }` as one line:
// `<name> [args]`.

func init() {
	for _, f := range []caddy.Module{
		new(ByAge), new(ByHostname), new(ByTag), new(RemoveSelf), new(AddSelf),
		new(Off), new(BackhandOff), new(SlowStart),
	} {
		caddy.RegisterModule(f)
	}
}

// fnInfo is the module info of the candidacy function name.
func fnInfo(name string, newFn func() caddy.Module) caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: caddy.ModuleID("backhand.functions." + name), New: newFn}
}

// noArgs is embedded by functions that take no arguments.
type noArgs struct{}

// UnmarshalCaddyfile accepts the function's name alone.
func (noArgs) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	name := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes no arguments, got %q", name, d.Val())
	}
	return nil
}

// optionalArg reads a function line with at most one argument into dst
// (left as it is when absent).
func optionalArg(d *caddyfile.Dispenser, dst *string) error {
	d.Next()
	if !d.NextArg() {
		return nil
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// ByAge keeps the peers heard from within MaxAge (mod_backhand's
// `byAge [seconds]`). The list starts with the peers heard within the
// policy's max_age; a byAge that allows older peers than that makes the
// list start from them (unless the policy's max_age is set: then the
// combination is refused). Written `byAge 6s` or, as in mod_backhand,
// `byAge 6` (seconds).
type ByAge struct {
	// MaxAge is the age limit. Default: the policy's max_age.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ByAge) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byAge", func() caddy.Module { return new(ByAge) })
}

// Candidates applies the function.
func (f *ByAge) Candidates(c *Candidates) {
	if f.MaxAge > 0 {
		c.filter(f)
	}
}

func (f *ByAge) admits(c *Candidates, p *Peer) bool {
	return p.Fresh(c.now, time.Duration(f.MaxAge))
}

// Validate refuses a negative age (0 is the policy's max_age).
func (f *ByAge) Validate() error {
	if f.MaxAge < 0 {
		return fmt.Errorf("byAge: max_age must be positive, got %v", time.Duration(f.MaxAge))
	}
	return nil
}

// UnmarshalCaddyfile reads `byAge [duration | seconds]`.
func (f *ByAge) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return nil
	}
	dur, err := parseSecondsOrDuration(d.Val())
	if err != nil || dur <= 0 {
		return d.Errf("byAge: %q is not a positive duration or number of seconds", d.Val())
	}
	f.MaxAge = caddy.Duration(dur)
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// parseSecondsOrDuration takes mod_backhand's bare seconds ("6", "0.5") or
// a Caddy duration ("6s").
func parseSecondsOrDuration(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(secs) || math.IsInf(secs, 0) || secs > 1e9 {
			return 0, fmt.Errorf("out of range")
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	return caddy.ParseDuration(s)
}

// ByHostname keeps the peers whose node name matches a regular expression
// (RE2 syntax, unanchored), like mod_backhand's byHostname.so:
// `byHostname (sun|alpha)`.
type ByHostname struct {
	// Pattern is the regular expression. Required.
	Pattern string `json:"pattern"`

	re *regexp.Regexp
}

// CaddyModule returns the Caddy module information.
func (ByHostname) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byHostname", func() caddy.Module { return new(ByHostname) })
}

// Provision compiles the pattern.
func (f *ByHostname) Provision(caddy.Context) error {
	re, err := regexp.Compile(f.Pattern)
	if err != nil || f.Pattern == "" {
		return fmt.Errorf("byHostname: pattern %q: %v", f.Pattern, err)
	}
	f.re = re
	return nil
}

// Candidates applies the function.
func (f *ByHostname) Candidates(c *Candidates) { c.filter(f) }

func (f *ByHostname) admits(_ *Candidates, p *Peer) bool { return f.re.MatchString(p.Name) }

// UnmarshalCaddyfile reads `byHostname <regexp>`.
func (f *ByHostname) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return cfgargs.OneString(d, &f.Pattern)
}

// ByTag keeps the peers that carry every one of the tags: `byTag cgi`.
type ByTag struct {
	// Tags that a peer must all have. Required.
	Tags []string `json:"tags"`
}

// CaddyModule returns the Caddy module information.
func (ByTag) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byTag", func() caddy.Module { return new(ByTag) })
}

// Validate requires a tag.
func (f *ByTag) Validate() error {
	if len(f.Tags) == 0 {
		return fmt.Errorf("byTag: at least one tag is required")
	}
	return nil
}

// Candidates applies the function.
func (f *ByTag) Candidates(c *Candidates) { c.filter(f) }

func (f *ByTag) admits(_ *Candidates, p *Peer) bool { return p.HasTags(f.Tags) }

// UnmarshalCaddyfile reads `byTag <tag...>`.
func (f *ByTag) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return cfgargs.MoreStrings(d, &f.Tags)
}

// RemoveSelf drops this node from the list, for a dedicated balancer that
// serves nothing itself.
type RemoveSelf struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (RemoveSelf) CaddyModule() caddy.ModuleInfo {
	return fnInfo("removeSelf", func() caddy.Module { return new(RemoveSelf) })
}

// Candidates applies the function.
func (f *RemoveSelf) Candidates(c *Candidates) { c.filter(f) }

func (f *RemoveSelf) admits(_ *Candidates, p *Peer) bool { return !p.Self }

// AddSelf puts this node at the end of the list if an earlier function
// dropped it (a window, a filter), so that when every other candidate is
// gone or worse, this node is still one. It is not added while draining.
type AddSelf struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (AddSelf) CaddyModule() caddy.ModuleInfo {
	return fnInfo("addSelf", func() caddy.Module { return new(AddSelf) })
}

// Candidates applies the function.
func (f *AddSelf) Candidates(c *Candidates) {
	self := c.table.selfSlot(c.view)
	if self == nil || slices.ContainsFunc(c.All(), func(x Candidate) bool { return x.slot == self }) {
		return
	}
	if p := self.cur.Load(); c.live(self, p) {
		c.list = append(c.list, Candidate{Peer: p, slot: self})
	}
}

// Off turns backhanding off (mod_backhand's backhand_off): no candidate is
// left and the functions after it do not run, so the `backhand` directive
// serves the request locally.
type Off struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (Off) CaddyModule() caddy.ModuleInfo {
	return fnInfo("off", func() caddy.Module { return new(Off) })
}

// Candidates applies the function.
func (Off) Candidates(c *Candidates) { c.decision.off = true }

// BackhandOff is off under mod_backhand's name, `backhand_off`, so that
// its configurations translate line by line.
type BackhandOff struct{ Off }

// CaddyModule returns the Caddy module information.
func (BackhandOff) CaddyModule() caddy.ModuleInfo {
	return fnInfo("backhand_off", func() caddy.Module { return new(BackhandOff) })
}

// SlowStart ramps up new peers: a peer first heard (in its current
// incarnation, so a restart counts) less than Window ago stays a candidate
// only with probability max(MinWeight, (age/Window)^(1/Aggression)), as in
// Envoy's slow start, so it is not flooded while its caches are cold. The
// draw is made once per peer and request, so the probability is the same
// whatever functions follow. Written
// `slowStart <window> [<aggression> [<min weight>]]`.
type SlowStart struct {
	// Window is how long the ramp lasts. Required.
	Window caddy.Duration `json:"window"`
	// Aggression shapes the ramp: 1 is linear, larger ramps faster at
	// first; it must be positive. Default: 1.
	Aggression *float64 `json:"aggression,omitempty"`
	// MinWeight is the least probability a new peer is kept with, 0-1 (0:
	// a peer heard just now gets nothing). Default: 0.1.
	MinWeight *float64 `json:"min_weight,omitempty"`

	aggression, minWeight float64
}

// CaddyModule returns the Caddy module information.
func (SlowStart) CaddyModule() caddy.ModuleInfo {
	return fnInfo("slowStart", func() caddy.Module { return new(SlowStart) })
}

// Provision fills the defaults and checks the ranges.
func (f *SlowStart) Provision(caddy.Context) error {
	f.aggression, f.minWeight = 1, 0.1
	if f.Aggression != nil {
		f.aggression = *f.Aggression
	}
	if f.MinWeight != nil {
		f.minWeight = *f.MinWeight
	}
	switch {
	case f.Window <= 0:
		return fmt.Errorf("slowStart: window must be positive, got %v", time.Duration(f.Window))
	case !(f.aggression > 0) || math.IsInf(f.aggression, 0):
		return fmt.Errorf("slowStart: aggression must be a positive number, got %v", f.aggression)
	case !(f.minWeight >= 0 && f.minWeight <= 1):
		return fmt.Errorf("slowStart: min weight must be 0-1, got %v", f.minWeight)
	}
	return nil
}

// Candidates applies the function.
func (f *SlowStart) Candidates(c *Candidates) { c.filter(f) }

func (f *SlowStart) admits(c *Candidates, p *Peer) bool {
	if p.Self {
		return true
	}
	w := f.rampWeight(c.now.Sub(p.FirstSeen))
	return w >= 1 || c.peerUniform(p.Name) <= w
}

// rampWeight is the share of its traffic a peer gets after age.
func (f *SlowStart) rampWeight(age time.Duration) float64 {
	if age >= time.Duration(f.Window) {
		return 1
	}
	t := max(float64(age), 0) / float64(f.Window)
	return max(f.minWeight, math.Pow(t, 1/f.aggression))
}

// UnmarshalCaddyfile reads `slowStart <window> [<aggression> [<min weight>]]`.
func (f *SlowStart) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 3 {
		return d.ArgErr()
	}
	dur, err := parseSecondsOrDuration(args[0])
	if err != nil {
		return d.Errf("slowStart: window %q: %v", args[0], err)
	}
	f.Window = caddy.Duration(dur)
	for i, dst := range []**float64{&f.Aggression, &f.MinWeight} {
		if len(args) > i+1 {
			v, err := strconv.ParseFloat(args[i+1], 64)
			if err != nil {
				return d.Errf("slowStart: %q is not a number", args[i+1])
			}
			*dst = &v
		}
	}
	return nil
}

// Interface guards
var (
	_ Function          = (*ByAge)(nil)
	_ Function          = (*ByHostname)(nil)
	_ Function          = (*ByTag)(nil)
	_ Function          = (*RemoveSelf)(nil)
	_ Function          = (*AddSelf)(nil)
	_ Function          = (*Off)(nil)
	_ Function          = (*SlowStart)(nil)
	_ caddy.Provisioner = (*ByHostname)(nil)
	_ caddy.Provisioner = (*SlowStart)(nil)
	_ caddy.Validator   = (*ByTag)(nil)
)
