// Package cfgargs reads the arguments of one Caddyfile line for the
// backhand modules and the candidacy functions, with errors that name the
// option (the line's first token) and say what it wants and what it got.
package cfgargs

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// OneString reads the line's single argument.
func OneString(d *caddyfile.Dispenser, dst *string) error {
	return oneArg(d, dst, "one value")
}

// oneArg reads the line's single argument; want says what it should be.
func oneArg(d *caddyfile.Dispenser, dst *string, want string) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.Errf("%s: want %s, got %d arguments %q", opt, want, len(args), args)
	}
	*dst = args[0]
	return nil
}

// MoreStrings appends the line's arguments, at least one, to dst.
func MoreStrings(d *caddyfile.Dispenser, dst *[]string) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("%s: want at least one value", opt)
	}
	*dst = append(*dst, args...)
	return nil
}

// OneDuration reads the line's single argument as a positive duration.
func OneDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	opt := d.Val()
	var s string
	if err := oneArg(d, &s, "one duration such as 1s or 500ms"); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %q is not a duration: %v", opt, s, err)
	}
	if dur <= 0 {
		return d.Errf("%s: must be positive, got %s", opt, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// OneInt reads the line's single argument as a whole number.
func OneInt(d *caddyfile.Dispenser, dst *int) error {
	opt := d.Val()
	var s string
	if err := oneArg(d, &s, "one whole number"); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("%s: %q is not a whole number", opt, s)
	}
	*dst = n
	return nil
}

// Flag sets dst for an option written alone, without arguments.
func Flag(d *caddyfile.Dispenser, dst *bool) error {
	opt := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes no arguments, got %q", opt, d.Val())
	}
	*dst = true
	return nil
}
