package fault

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// TestQuick runs the quick mode (death, restart, drain, reload storm, key
// rotation in the directive deployment, short) on real processes and
// checks the targets coarsely: no GET fails, no POST is served
// twice (nor a GET but after a death), none is answered without an
// application, a dead node gets no new request later than max_age + 1 s
// after it died, and at every step of the key rotation every node heard
// every other, with no announcement rejected.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real Caddy processes for about a minute and a half")
	}
	defer cluster.LockForTest(t)() // no other real-process test beside it
	o := QuickOptions()
	dir := t.TempDir()
	o.Dir = dir
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("XDG_DATA_HOME", dir)
	var log strings.Builder
	o.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	reps, err := Run(ctx, o)
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != len(o.Faults)*len(o.Deployments) {
		t.Fatalf("%d reports, want %d", len(reps), len(o.Faults)*len(o.Deployments))
	}
	for _, r := range reps {
		if r.Err != nil {
			t.Errorf("%s/%s: %v", r.Fault, r.Deploy, r.Err)
		}
		if r.GetFail != 0 {
			t.Errorf("%s/%s: %d GETs failed (%s), want 0", r.Fault, r.Deploy, r.GetFail, r.FailureSummary())
		}
		// A GET whose node was killed after its application served it,
		// before the answer left, is retried: served twice, by design of
		// the retries. Nothing else may be served twice, and no POST ever.
		if r.DupPost != 0 || (r.DupGet != 0 && r.Fault != "death") {
			t.Errorf("%s/%s: served twice: %d GETs, %d POSTs", r.Fault, r.Deploy, r.DupGet, r.DupPost)
		}
		if r.Lost != 0 {
			t.Errorf("%s/%s: %d requests answered 2xx that no application served", r.Fault, r.Deploy, r.Lost)
		}
		// A rolling key rotation: at every step every node heard every
		// other, and nothing was rejected.
		if r.Fault == "rotate" {
			for _, n := range r.Notes {
				if strings.HasPrefix(n, "rotation step") {
					t.Errorf("rotate/%s: %s", r.Deploy, n)
				}
			}
		}
		if r.Fault == "death" && (r.SentLate != 0 || r.StopAfter < 0 || r.StopAfter > o.MaxAge+time.Second) {
			t.Errorf("death/%s: last new request to the dead node %v after the kill, %d later than max_age+1s; want within %v",
				r.Deploy, r.StopAfter, r.SentLate, o.MaxAge+time.Second)
		}
	}
}
