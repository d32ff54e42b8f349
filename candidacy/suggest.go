package candidacy

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Suggest returns the known candidacy function whose name is closest to
// name (at most two edits away, case aside), for "did you mean" in error
// messages; "" when none is that close.
func Suggest(name string) string {
	best, bestDist := "", 3
	for _, info := range caddy.GetModules("backhand.functions") {
		known := info.ID.Name()
		if d := editDistance(strings.ToLower(name), strings.ToLower(known)); d < bestDist {
			best, bestDist = known, d
		}
	}
	return best
}

// unknownFunction is the error for a line naming no candidacy function.
func unknownFunction(name string) string {
	msg := "unknown candidacy function or option " + quote(name)
	if s := Suggest(name); s != "" {
		msg += " (did you mean " + s + "?)"
	}
	return msg
}

func quote(s string) string { return `"` + s + `"` }

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
