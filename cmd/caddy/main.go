// Command caddy is Caddy with its standard modules plus caddy-backhand: what
// `xcaddy build --with github.com/caddy-backhand/backhand` produces. Tests and
// the local cluster build it from here.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-backhand/backhand"
)

func main() {
	caddycmd.Main()
}
