// Package logtext keeps bad input readable in error messages and logs.
package logtext

// Clip shortens s to at most n bytes (and "..."), so that a huge bad input
// (an application report, a cgroup file) does not flood the logs.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
