// Package candidacy is backhand's candidacy model: the table of peers as
// this node heard them (with what it observes of each itself: requests in
// flight, response times, failures), the candidate list that a chain of
// candidacy functions filters, reorders and truncates, the estimates those
// functions rank by, and the built-in functions, registered as Caddy
// modules `backhand.functions.<name>`.
//
// A third-party candidacy function is a Caddy module in the
// `backhand.functions` namespace that implements Function (and
// caddyfile.Unmarshaler, to be written as a line of `lb_policy backhand`);
// it works on the list through Candidates' methods. Package candidacytest
// runs functions and chains outside Caddy; examples/byheader is a
// complete, tested example.
//
// The Caddy modules that run chains (`lb_policy backhand`, `dynamic
// backhand`, the `backhand` directive) are in package backhand.
package candidacy
