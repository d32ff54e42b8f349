package byheader

import (
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-backhand/backhand" // the backhand app and lb_policy backhand
	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/candidacy/candidacytest"
)

func TestByHeaderFilters(t *testing.T) {
	now := time.Now()
	peers := []*candidacy.Peer{
		{Name: "a", Advertise: "127.0.0.2:80", Tags: []string{"gold"}, ReceivedAt: now},
		{Name: "b", Advertise: "127.0.0.3:80", Tags: []string{"silver"}, ReceivedAt: now},
		{Name: "c", Advertise: "127.0.0.4:80", Tags: []string{"gold", "silver"}, ReceivedAt: now},
	}
	f := &ByHeader{Header: "X-Tier"}
	for _, tt := range []struct {
		tier string
		want []string
	}{{"gold", []string{"a", "c"}}, {"silver", []string{"b", "c"}}, {"", []string{"a", "b", "c"}}, {"bronze", nil}} {
		r := httptest.NewRequest("GET", "/", nil)
		if tt.tier != "" {
			r.Header.Set("X-Tier", tt.tier)
		}
		c := candidacytest.NewCandidates(r, now, peers...)
		f.Candidates(c)
		if got := c.Names(); !slices.Equal(got, tt.want) {
			t.Errorf("X-Tier %q: got %v, want %v", tt.tier, got, tt.want)
		}
	}
}

// The module is found by name in `lb_policy backhand`, like a built-in.
func TestByHeaderInCaddyfile(t *testing.T) {
	caddyfile := `{
	backhand {
		insecure_no_key
	}
}
:8080 {
	reverse_proxy {
		dynamic backhand
		lb_policy backhand {
			byHeader X-Tier
			byRandom
		}
	}
}`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	lb := string(cfg.Apps.HTTP.Servers["srv0"].Routes[0].Handle[0]["load_balancing"])
	if !strings.Contains(lb, `{"function":"byHeader","header":"X-Tier"}`) {
		t.Errorf("load_balancing %s lacks the byHeader function", lb)
	}
}
