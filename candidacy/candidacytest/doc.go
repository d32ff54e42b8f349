// Package candidacytest runs candidacy chains and functions outside a
// running Caddy: NewCandidates starts a list over given peers, for testing
// a candidacy function; a Board is a peer table fed by the caller, over
// which a Chain parsed from its Caddyfile form (ParseChain) chooses, for
// simulators and tools.
package candidacytest
