package backhand

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// goldenCases reads testdata/<dir>/*.<ext>: an input, a line of ten dashes,
// then the expected output.
func goldenCases(t *testing.T, dir, ext string) map[string][2]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*."+ext))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files in testdata/%s: %v", dir, err)
	}
	cases := map[string][2]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		in, want, ok := strings.Cut(string(b), "\n----------\n")
		if !ok {
			t.Fatalf("%s: no ---------- separator", f)
		}
		cases[filepath.Base(f)] = [2]string{in, strings.TrimSpace(want)}
	}
	return cases
}

// TestCaddyfileAdapt adapts each Caddyfile and compares the JSON, or, when
// the expectation is not JSON, checks that adapting fails with that text.
func TestCaddyfileAdapt(t *testing.T) {
	for name, c := range goldenCases(t, "caddyfile_adapt", "caddyfiletest") {
		t.Run(name, func(t *testing.T) {
			in, want := c[0], c[1]
			out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
			if !strings.HasPrefix(want, "{") {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("adapt error %v, want one containing %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var got bytes.Buffer
			if err := json.Indent(&got, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			if got.String() != want {
				if os.Getenv("BACKHAND_UPDATE_GOLDEN") == "1" {
					updateGolden(t, name, in, got.String())
					return
				}
				t.Errorf("adapted JSON differs.\n--- got\n%s\n--- want\n%s", got.String(), want)
			}
		})
	}
}

// updateGolden rewrites a golden file's expectation (BACKHAND_UPDATE_GOLDEN=1):
// review the diff before committing it.
func updateGolden(t *testing.T, name, in, got string) {
	path := filepath.Join("testdata", "caddyfile_adapt", name)
	if err := os.WriteFile(path, []byte(in+"\n----------\n"+got+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("updated %s", path)
}

// TestJSONConfig loads each JSON config the way Caddy does (strict decoding,
// provisioning, validation; no sockets) and expects "ok" or an error that
// contains the expectation, which names the option and the bad value.
func TestJSONConfig(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("BACKHAND_TEST_KEY", "from-the-environment-0123")
	for name, c := range goldenCases(t, "json", "jsontest") {
		t.Run(name, func(t *testing.T) {
			in, want := c[0], c[1]
			var cfg caddy.Config
			dec := json.NewDecoder(strings.NewReader(in))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&cfg); err != nil {
				t.Fatalf("decoding the test config: %v", err)
			}
			err := caddy.Validate(&cfg)
			if want == "ok" {
				if err != nil {
					t.Fatalf("config rejected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want one containing %q", err, want)
			}
		})
	}
}
