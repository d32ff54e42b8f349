package backhand

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestAppReportParse(t *testing.T) {
	tests := []struct {
		in   string
		want appReport
	}{
		{"load=0.75", appReport{Load1000: 750, HasLoad: true}},
		{"LOAD=1.5\n", appReport{Load1000: 1500, HasLoad: true}},
		{"load=0", appReport{Load1000: 0, HasLoad: true}},
		{"load=1e400", appReport{Load1000: math.MaxUint32, HasLoad: true}},
		{"load=5000000", appReport{Load1000: math.MaxUint32, HasLoad: true}},
		{"load=0.0004", appReport{Load1000: 0, HasLoad: true}},
		{"weight=800", appReport{Weight: 800, HasWeight: true}},
		{"weight=0", appReport{Weight: 0, HasWeight: true}},
		{"weight=1000", appReport{Weight: 1000, HasWeight: true}},
		{"75%", appReport{Weight: 750, HasWeight: true}},
		{"100%", appReport{Weight: 1000, HasWeight: true}},
		{"0%", appReport{Weight: 0, HasWeight: true}},
		{"weight=40%", appReport{Weight: 400, HasWeight: true}},
		{"load=2.5 weight=40% drain\n", appReport{Load1000: 2500, HasLoad: true, Weight: 400, HasWeight: true, Drain: true}},
		{"drain", appReport{Drain: true}},
		{"ready", appReport{}},
		{"UP", appReport{}},
		{"down", appReport{Drain: true}},
		{"maint", appReport{Drain: true}},
		{"stopped", appReport{Drain: true}},
		{"fail", appReport{Drain: true}},
		{"down#backend unreachable", appReport{Drain: true}},
		{"up 75%\n", appReport{Weight: 750, HasWeight: true}},
		{"load=0.4, weight=800", appReport{Load1000: 400, HasLoad: true, Weight: 800, HasWeight: true}},
		{"load=0.4\tweight=800\r\ndrain\n", appReport{Load1000: 400, HasLoad: true, Weight: 800, HasWeight: true, Drain: true}},
		{"# comment\nweight=10 # trailing\n", appReport{Weight: 10, HasWeight: true}},
		{"weight=10 weight=20", appReport{Weight: 20, HasWeight: true}},
		{"drain ready", appReport{Drain: true}},
		{"\xef\xbb\xbfready", appReport{}},
	}
	for _, tt := range tests {
		got, err := parseAppReport([]byte(tt.in))
		if err != nil {
			t.Errorf("parseAppReport(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("parseAppReport(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestAppReportParseErrors(t *testing.T) {
	tests := []struct {
		in      string
		mention string // the error must name this
	}{
		{"", "empty"},
		{"  \n\t, ", "empty"},
		{"# only a comment", "empty"},
		{"lod=1", `"lod=1"`},
		{"ready drian", `"drian"`},
		{"maxconn:30", `"maxconn:30"`},
		{"load=", `"load="`},
		{"load=-1", `"load=-1"`},
		{"load=nan", `"load=nan"`},
		{"load=abc", `"load=abc"`},
		{"load = 1", `"load"`},
		{"weight=1001", `"weight=1001"`},
		{"weight=-1", `"weight=-1"`},
		{"weight=0.5", `"weight=0.5"`},
		{"weight=99999999", `"weight=99999999"`},
		{"101%", `"101%"`},
		{"%", `"%"`},
		{"-5%", `"-5%"`},
		{"7.5%", `"7.5%"`},
		{"weight=101%", `"weight=101%"`},
		{"weight=%", `"weight=%"`},
		{"load=5%", `"load=5%"`},
	}
	for _, tt := range tests {
		got, err := parseAppReport([]byte(tt.in))
		if err == nil {
			t.Errorf("parseAppReport(%q) = %+v, want error", tt.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("parseAppReport(%q) error %q does not mention %s", tt.in, err, tt.mention)
		}
		if got != (appReport{}) {
			t.Errorf("parseAppReport(%q) returned %+v with its error", tt.in, got)
		}
	}
}

func TestAppReportApply(t *testing.T) {
	f := Figures{Draining: true, AppWeight: 5, HasAppWeight: true, AppLoad1000: 6, HasAppLoad: true}
	appReport{Load1000: 750, HasLoad: true}.apply(&f)
	want := Figures{Draining: true, AppLoad1000: 750, HasAppLoad: true}
	if f != want {
		t.Errorf("apply = %+v, want %+v (weight cleared, drain kept)", f, want)
	}
	f = Figures{}
	appReport{Weight: 800, HasWeight: true, Drain: true}.apply(&f)
	want = Figures{Draining: true, AppWeight: 800, HasAppWeight: true}
	if f != want {
		t.Errorf("apply = %+v, want %+v", f, want)
	}
}

func TestAppReportValidate(t *testing.T) {
	good := []AppReportSource{
		{File: "/run/app/report"},
		{URL: "http://127.0.0.1:8080/health"},
		{URL: "http://127.1.2.3/"},
		{URL: "http://[::1]:9000/x"},
		{URL: "http://localhost:9000/x", Timeout: caddy.Duration(time.Second)},
		{URL: "http://LOCALHOST/"},
	}
	for _, s := range good {
		if err := s.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", s, err)
		}
	}
	bad := []struct {
		src     AppReportSource
		mention string
	}{
		{AppReportSource{}, "one of file or url"},
		{AppReportSource{File: "/a", URL: "http://127.0.0.1/"}, "mutually exclusive"},
		{AppReportSource{URL: "http://10.0.0.1/"}, `app_report: url "http://10.0.0.1/" is not on a loopback address`},
		{AppReportSource{URL: "http://example.com/"}, "not on a loopback address"},
		{AppReportSource{URL: "http://localhost.example.com/"}, "not on a loopback address"},
		{AppReportSource{URL: "http:///path"}, "not on a loopback address"},
		{AppReportSource{URL: "https://127.0.0.1/"}, "http://"},
		{AppReportSource{URL: "127.0.0.1:8080"}, `"127.0.0.1:8080"`},
		{AppReportSource{URL: "http://127.0.0.1:8080/%zz"}, `%zz`},
		{AppReportSource{File: "/a", Timeout: caddy.Duration(-time.Second)}, "timeout -1s"},
	}
	for _, tt := range bad {
		err := tt.src.Validate()
		if err == nil {
			t.Errorf("Validate(%+v) succeeded", tt.src)
			continue
		}
		if !strings.Contains(err.Error(), tt.mention) || !strings.HasPrefix(err.Error(), "app_report: ") {
			t.Errorf("Validate(%+v) = %q, want it to mention %q", tt.src, err, tt.mention)
		}
	}
}

func TestAppReportFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report")
	if err := os.WriteFile(path, []byte("load=0.25 90%\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := newAppReporter(AppReportSource{File: path})
	defer a.close()
	got, err := a.read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (appReport{Load1000: 250, HasLoad: true, Weight: 900, HasWeight: true}); got != want {
		t.Errorf("read = %+v, want %+v", got, want)
	}

	// Read again each time: a change shows.
	if err := os.WriteFile(path, []byte("drain"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err = a.read(context.Background()); err != nil || !got.Drain {
		t.Errorf("read after change = %+v, %v; want drain", got, err)
	}

	for name, src := range map[string]string{
		"missing":   filepath.Join(dir, "nope"),
		"directory": dir,
	} {
		if _, err := newAppReporter(AppReportSource{File: src}).read(context.Background()); err == nil {
			t.Errorf("%s: read succeeded", name)
		}
	}
}

func TestAppReportFileSize(t *testing.T) {
	dir := t.TempDir()
	exact := filepath.Join(dir, "exact")
	body := "load=1" + strings.Repeat(" ", maxAppReport-len("load=1"))
	if err := os.WriteFile(exact, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newAppReporter(AppReportSource{File: exact}).read(context.Background()); err != nil {
		t.Errorf("4 KiB report: %v", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(body+" "), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newAppReporter(AppReportSource{File: big}).read(context.Background()); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized report: error %v, want larger than", err)
	}
}

func TestAppReportURL(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method", http.StatusMethodNotAllowed)
			return
		}
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "load=0.5, weight=600\n")
		case "/big":
			fmt.Fprint(w, "ready"+strings.Repeat(" ", maxAppReport))
		case "/down":
			http.Error(w, "drain", http.StatusServiceUnavailable)
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		case "/typo":
			fmt.Fprint(w, "weigth=5")
		}
	}))
	defer srv.Close()

	read := func(path string, timeout time.Duration) (appReport, error) {
		a := newAppReporter(AppReportSource{URL: srv.URL + path, Timeout: caddy.Duration(timeout)})
		defer a.close()
		return a.read(context.Background())
	}

	got, err := read("/ok", 0)
	if want := (appReport{Load1000: 500, HasLoad: true, Weight: 600, HasWeight: true}); err != nil || got != want {
		t.Errorf("/ok: %+v, %v; want %+v", got, err, want)
	}
	for _, path := range []string{"/big", "/down", "/redirect", "/typo"} {
		if got, err := read(path, 0); err == nil {
			t.Errorf("%s: %+v, want error", path, got)
		} else {
			t.Logf("%s: %v", path, err)
		}
	}

	start := time.Now()
	if _, err := read("/slow", 50*time.Millisecond); err == nil {
		t.Error("/slow: no error, want timeout")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("/slow took %v with a 50ms timeout", d)
	}
}

func TestAppReportDefaultTimeout(t *testing.T) {
	if a := newAppReporter(AppReportSource{URL: "http://127.0.0.1/"}); a.timeout != defaultAppReportTimeout {
		t.Errorf("timeout = %v, want %v", a.timeout, defaultAppReportTimeout)
	}
}

func TestAppReportLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:80", "127.9.9.9:1", "[::1]:80"} {
		if err := loopbackOnly("tcp", addr, nil); err != nil {
			t.Errorf("loopbackOnly(%s): %v", addr, err)
		}
	}
	for _, addr := range []string{"10.0.0.1:80", "[2001:db8::1]:80", "example.com:80", "nonsense"} {
		if err := loopbackOnly("tcp", addr, nil); err == nil {
			t.Errorf("loopbackOnly(%s) allowed it", addr)
		}
	}
}

func TestAppReportNoSource(t *testing.T) {
	if _, err := newAppReporter(AppReportSource{}).read(context.Background()); err == nil {
		t.Error("read without a source succeeded")
	}
}

func FuzzParseAppReport(f *testing.F) {
	for _, s := range []string{
		"load=0.75", "weight=800", "75%", "drain", "ready", "up 75%", "down#why",
		"load=1e400", "load=-0", "weight=1000,load=3", "# x\n", "", "lod=1", "100%%",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseAppReport(b)
		if err != nil {
			if r != (appReport{}) {
				t.Fatalf("error %v with report %+v", err, r)
			}
			return
		}
		if r.HasWeight && r.Weight > 1000 {
			t.Fatalf("weight %d > 1000", r.Weight)
		}
		if !r.HasWeight && r.Weight != 0 {
			t.Fatalf("weight %d without HasWeight", r.Weight)
		}
		if !r.HasLoad && r.Load1000 != 0 {
			t.Fatalf("load %d without HasLoad", r.Load1000)
		}
		again, err := parseAppReport(b)
		if err != nil || again != r {
			t.Fatalf("parse is not deterministic: %+v, %v then %+v", r, err, again)
		}
		var fig Figures
		r.apply(&fig)
		if fig.Draining != r.Drain || fig.HasAppWeight != r.HasWeight || fig.HasAppLoad != r.HasLoad {
			t.Fatalf("apply(%+v) = %+v", r, fig)
		}
	})
}
