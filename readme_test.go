package backhand_test

// Tests that keep README.md's examples working:
//
//   - TestReadmeExamplesInTestdata: every complete ```caddyfile and ```json
//     example is in testdata/readme/, verbatim, and every file there is an
//     example of the README, so the two cannot drift;
//   - TestReadmeCaddyfiles: each Caddyfile example adapts (without
//     warnings), is `caddy fmt`-clean, and its JSON loads as Caddy loads it;
//   - TestReadmeJSON: each JSON example loads as Caddy loads it;
//   - TestIntegrationReadmeAdminAPI (not under -short): a real node started
//     from the README's JSON takes the README's admin-API curl commands,
//     parsed from the README, and each one takes effect.
//
// Skipped: the syntax references (the `backhand` global option, `dynamic
// backhand`, the `backhand` directive), which hold `<...>` placeholders and
// are not configs. The other fences (sh, text, yaml) are not examples of a
// config, except for the curl commands against the admin endpoint (:2019),
// which the integration test runs.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-backhand/backhand"
	"github.com/caddy-backhand/backhand/internal/cluster"
)

const (
	readmePath    = "README.md"
	readmeTestdir = "testdata/readme"
	// readmeKey is what {env.BACKHAND_KEY} of the examples resolves to.
	readmeKey = "readme-test-key-0123456789"
)

// readmeBlock is one fenced block of the README.
type readmeBlock struct {
	lang    string // the fence's info string: caddyfile, json, sh, ...
	text    string // the lines between the fences, each ending in \n
	line    int    // of the opening fence, 1-based
	section string // the heading above it
}

func (b readmeBlock) String() string {
	return fmt.Sprintf("README.md:%d (%s, ```%s)", b.line, b.section, b.lang)
}

// placeholder marks a syntax reference: `<node name>`, `<duration>`, ...
var placeholder = regexp.MustCompile(`<[a-zA-Z][^<>\n]*>`)

// readmeBlocks returns the README's fenced blocks in order.
func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	var (
		blocks  []readmeBlock
		cur     *readmeBlock
		section string
	)
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{lang: strings.TrimSpace(strings.TrimPrefix(line, "```")), line: i + 1, section: section}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "#"):
			section = strings.TrimSpace(strings.TrimLeft(line, "#"))
		}
	}
	if cur != nil {
		t.Fatalf("README.md:%d: fence never closed", cur.line)
	}
	return blocks
}

// readmeExamples returns the complete ```caddyfile and ```json examples:
// every such block but the syntax references.
func readmeExamples(t *testing.T) []readmeBlock {
	t.Helper()
	var out []readmeBlock
	for _, b := range readmeBlocks(t) {
		if (b.lang == "caddyfile" || b.lang == "json") && !placeholder.MatchString(b.text) {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		t.Fatal("no ```caddyfile or ```json examples in README.md")
	}
	return out
}

// TestReadmeExamplesInTestdata requires every README example to be a file
// of testdata/readme/ (same extension, same bytes) and every file there to
// be a README example.
func TestReadmeExamplesInTestdata(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(readmeTestdir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	contents := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		contents[f] = string(b)
	}
	used := map[string]bool{}
	for i, b := range readmeExamples(t) {
		var match string
		for _, f := range files {
			if strings.TrimPrefix(filepath.Ext(f), ".") == b.lang && contents[f] == b.text {
				match = f
			}
		}
		if match == "" {
			t.Errorf("%s is not in %s: copy it there verbatim (one file per example), e.g. as %s/example-%d.%s, "+
				"or update the file it was copied to:\n%s", b, readmeTestdir, readmeTestdir, i+1, b.lang, b.text)
			continue
		}
		used[match] = true
	}
	for _, f := range files {
		if !used[f] {
			t.Errorf("%s is no README example (any more): remove it, or put it back in the README verbatim", f)
		}
	}
}

// readmeEnv makes the examples' {env.BACKHAND_KEY} resolve and keeps Caddy's
// storage out of the home directory.
func readmeEnv(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("BACKHAND_KEY", readmeKey)
}

// validateJSON loads a config as Caddy does (strict decoding, provisioning,
// validation) without starting it: no sockets are opened.
func validateJSON(t *testing.T, cfgJSON []byte) {
	t.Helper()
	var cfg caddy.Config
	dec := json.NewDecoder(bytes.NewReader(cfgJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("decoding the config: %v", err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("Caddy rejects the config: %v", err)
	}
}

// TestReadmeCaddyfiles adapts every Caddyfile example, checks that it is
// `caddy fmt`-clean, and validates its JSON.
func TestReadmeCaddyfiles(t *testing.T) {
	readmeEnv(t)
	for _, b := range readmeExamples(t) {
		if b.lang != "caddyfile" {
			continue
		}
		t.Run(strconv.Itoa(b.line), func(t *testing.T) {
			if got := string(caddyfile.Format([]byte(b.text))); got != b.text {
				t.Errorf("%s is not `caddy fmt`-clean; formatted:\n%s", b, got)
			}
			out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(b.text), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("%s: adapt: %v\n%s", b, err, b.text)
			}
			for _, w := range warnings {
				t.Errorf("%s: adapt warns: %s", b, w)
			}
			validateJSON(t, out)
		})
	}
}

// TestReadmeJSON validates every JSON example.
func TestReadmeJSON(t *testing.T) {
	readmeEnv(t)
	n := 0
	for _, b := range readmeExamples(t) {
		if b.lang != "json" {
			continue
		}
		n++
		t.Run(strconv.Itoa(b.line), func(t *testing.T) {
			validateJSON(t, []byte(b.text))
		})
	}
	if n == 0 {
		t.Fatal("no JSON example in README.md")
	}
}

// curlCmd is one curl command of the README against the admin endpoint.
type curlCmd struct {
	src     string // the command as written
	block   readmeBlock
	method  string
	path    string // with the query, without scheme and host
	headers http.Header
	body    string // the -d argument: a literal, or @file
}

// shellWords splits a command line as sh does for the quoting the README
// uses: single and double quotes, backslash escapes, # comments.
func shellWords(line string) ([]string, error) {
	var (
		words []string
		word  strings.Builder
		in    bool // inside a word
		quote rune
	)
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				word.WriteRune(r)
			}
		case quote == '"':
			if r == '"' {
				quote = 0
			} else if r == '\\' && i+1 < len(rs) && strings.ContainsRune(`"\$`+"`", rs[i+1]) {
				i++
				word.WriteRune(rs[i])
			} else {
				word.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			word.WriteRune(rs[i])
			in = true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, word.String())
				word.Reset()
				in = false
			}
		case r == '#' && !in:
			i = len(rs)
		default:
			word.WriteRune(r)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if in {
		words = append(words, word.String())
	}
	return words, nil
}

// adminURL matches the admin endpoint in a curl command's URL.
var adminURL = regexp.MustCompile(`^(?:https?://)?(?:localhost|127\.0\.0\.1|\[::1\]):2019(/.*)?$`)

// readmeCurls returns the README's curl commands against the admin endpoint
// (any ```sh block, any section), in order.
func readmeCurls(t *testing.T) []curlCmd {
	t.Helper()
	var cmds []curlCmd
	for _, b := range readmeBlocks(t) {
		if b.lang != "sh" {
			continue
		}
		joined := strings.ReplaceAll(b.text, "\\\n", " ")
		for line := range strings.SplitSeq(joined, "\n") {
			line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
			if !strings.HasPrefix(line, "curl ") || !strings.Contains(line, ":2019") {
				continue
			}
			words, err := shellWords(line)
			if err != nil {
				t.Fatalf("%s: %q: %v", b, line, err)
			}
			c := curlCmd{src: line, block: b, headers: http.Header{}}
			for i := 1; i < len(words); i++ {
				w := words[i]
				arg := func() string {
					if i+1 >= len(words) {
						t.Fatalf("%s: %q: %s without an argument", b, line, w)
					}
					i++
					return words[i]
				}
				switch w {
				case "-s", "-S", "-sS", "-f", "-sf", "--silent", "--fail", "--show-error":
				case "-X", "--request":
					c.method = arg()
				case "-H", "--header":
					k, v, ok := strings.Cut(arg(), ":")
					if !ok {
						t.Fatalf("%s: %q: bad header", b, line)
					}
					c.headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
				case "-d", "--data", "--data-binary", "--data-raw":
					c.body = arg()
				default:
					m := adminURL.FindStringSubmatch(w)
					if strings.HasPrefix(w, "-") || m == nil {
						t.Fatalf("%s: %q: this test does not understand %q; teach readmeCurls", b, line, w)
					}
					c.path = m[1]
				}
			}
			if c.path == "" {
				t.Fatalf("%s: %q: no admin URL", b, line)
			}
			if c.method == "" {
				c.method = http.MethodGet
				if c.body != "" {
					c.method = http.MethodPost
				}
			}
			cmds = append(cmds, c)
		}
	}
	return cmds
}

// localizer moves a README config onto this machine's loopback: every
// "host:port" string (IPv4 or empty host, "udp/" kept) becomes
// 127.0.0.1 and a free port of the test's block, the same one for the
// same address each time; the admin endpoint goes to its own free port.
type localizer struct {
	base  int
	ports map[string]int
	admin string
}

var addrString = regexp.MustCompile(`"(udp/)?((?:\d{1,3}\.){3}\d{1,3})?:(\d{1,5})"`)

func (l *localizer) localize(t *testing.T, cfg []byte) []byte {
	t.Helper()
	out := addrString.ReplaceAllStringFunc(string(cfg), func(s string) string {
		m := addrString.FindStringSubmatch(s)
		key := m[2] + ":" + m[3]
		p, ok := l.ports[key]
		if !ok {
			p = l.base + len(l.ports)
			if p >= l.base+itBlock-1 {
				t.Fatalf("more addresses than free ports: %v", l.ports)
			}
			l.ports[key] = p
		}
		return fmt.Sprintf(`"%s127.0.0.1:%d"`, m[1], p)
	})
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("the config is not JSON: %v", err)
	}
	v["admin"] = map[string]any{"listen": l.admin, "config": map[string]any{"persist": false}}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readmeNode is a Caddy process started from a JSON config.
type readmeNode struct {
	admin  string // http://127.0.0.1:port
	client *http.Client
	done   chan struct{}
	log    string
}

func startReadmeNode(t *testing.T, bin string, cfg []byte) *readmeNode {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	var v struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
	}
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "caddy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"BACKHAND_KEY="+readmeKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	n := &readmeNode{
		admin: "http://" + v.Admin.Listen,
		// The admin server is replaced on every config load: no keep-alives.
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		done:   make(chan struct{}),
		log:    logPath,
	}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(n.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-n.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("--- node log (%s), last lines ---\n%s", logPath, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})
	if err := cluster.Poll(t.Context(), 30*time.Second, itPoll, func() error {
		select {
		case <-n.done:
			return cluster.Permanent(fmt.Errorf("caddy exited"))
		default:
		}
		status, body, err := n.do(t.Context(), http.MethodGet, "/backhand/peers", nil, "")
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("GET /backhand/peers: %d %s", status, body)
		}
		return err
	}); err != nil {
		t.Fatalf("the node did not start: %v", err)
	}
	return n
}

func (n *readmeNode) do(ctx context.Context, method, path string, h http.Header, body string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, n.admin+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// getJSON fetches an admin path and decodes its JSON.
func (n *readmeNode) getJSON(t *testing.T, path string) any {
	t.Helper()
	status, body, err := n.do(t.Context(), http.MethodGet, path, nil, "")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", path, status, body, err)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: not JSON: %v: %s", path, err, body)
	}
	return v
}

// readmePeers is the part of GET /backhand/peers the test checks.
type readmePeers struct {
	Draining bool `json:"draining"`
	Peers    []struct {
		Name  string   `json:"name"`
		State string   `json:"state"`
		Tags  []string `json:"tags"`
	} `json:"peers"`
}

func (n *readmeNode) peers(t *testing.T) readmePeers {
	t.Helper()
	status, body, err := n.do(t.Context(), http.MethodGet, "/backhand/peers", nil, "")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /backhand/peers: %d %s %v", status, body, err)
	}
	var v readmePeers
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func jsonValue(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, s)
	}
	return v
}

// TestIntegrationReadmeAdminAPI starts a node from the JSON example that
// the README's `POST /load` example loads, on free loopback ports, and runs
// every README curl command against the admin endpoint on it, in the
// README's order, checking that each took effect.
func TestIntegrationReadmeAdminAPI(t *testing.T) {
	bin := caddyBin(t)
	cmds := readmeCurls(t)
	var configFile string
	for _, c := range cmds {
		if c.path == "/load" && strings.HasPrefix(c.body, "@") {
			configFile = filepath.Join(readmeTestdir, strings.TrimPrefix(c.body, "@"))
		}
	}
	if configFile == "" {
		t.Fatal("README.md has no `curl ... :2019/load -d @file.json` example, whose file this test starts the node from")
	}
	raw, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatalf("the README's POST /load example loads %v; it must be one of the README's JSON examples in %s", err, readmeTestdir)
	}
	base := itBase(t, 1)
	loc := &localizer{base: base, ports: map[string]int{}, admin: fmt.Sprintf("127.0.0.1:%d", base+itBlock-1)}
	n := startReadmeNode(t, bin, loc.localize(t, raw))
	// The node answers /backhand/peers before its announcer has put its
	// own row in the table: wait for that row.
	var self string
	if err := cluster.Poll(t.Context(), 10*time.Second, itPoll, func() error {
		for _, p := range n.peers(t).Peers {
			if p.State == "self" {
				self = p.Name
				return nil
			}
		}
		return errors.New("no self row in /backhand/peers yet")
	}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		t.Logf("%s: %s", c.block, c.src)
		body := c.body
		if strings.HasPrefix(body, "@") {
			f := filepath.Join(readmeTestdir, strings.TrimPrefix(body, "@"))
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatalf("%q: %v (a file the README's curl sends must be a README example in %s)", c.src, err, readmeTestdir)
			}
			body = string(loc.localize(t, b))
		}
		status, resp, err := n.do(t.Context(), c.method, c.path, c.headers, body)
		if err != nil || status != http.StatusOK {
			t.Fatalf("%q: %d %s %v", c.src, status, resp, err)
		}
		switch {
		case c.method == http.MethodGet:
			seen["GET"] = true
			if !json.Valid(resp) {
				t.Errorf("%q: the answer is not JSON: %s", c.src, resp)
			}
		case c.path == "/backhand/drain" || c.path == "/backhand/undrain":
			want := c.path == "/backhand/drain"
			seen[c.path] = true
			if got := n.peers(t).Draining; got != want {
				t.Errorf("%q: GET /backhand/peers shows draining %v, want %v", c.src, got, want)
			}
		case c.path == "/load" && c.method == http.MethodPost:
			seen["/load"] = true
			if got, want := n.getJSON(t, "/config/"), jsonValue(t, body); !reflect.DeepEqual(got, want) {
				t.Errorf("%q: GET /config/ after the load:\n%v\nwant the loaded config:\n%v", c.src, got, want)
			}
		case strings.HasPrefix(c.path, "/config/") && (c.method == http.MethodPatch || c.method == http.MethodPut):
			if got, want := n.getJSON(t, c.path), jsonValue(t, body); !reflect.DeepEqual(got, want) {
				t.Errorf("%q: GET %s = %v, want %v", c.src, c.path, got, want)
			}
			switch {
			case strings.HasSuffix(c.path, "/selection_policy/chain"):
				seen["chain"] = true
			case c.path == "/config/apps/backhand/tags":
				seen["tags"] = true
				want, _ := jsonValue(t, body).([]any)
				if err := cluster.Poll(t.Context(), 5*time.Second, itPoll, func() error {
					for _, p := range n.peers(t).Peers {
						if p.Name == self {
							got := make([]any, len(p.Tags))
							for i, s := range p.Tags {
								got[i] = s
							}
							if !slices.Equal(got, want) {
								return fmt.Errorf("self (%s) announces tags %v, want %v", self, p.Tags, want)
							}
							return nil
						}
					}
					return fmt.Errorf("no self row %q in /backhand/peers", self)
				}); err != nil {
					t.Errorf("%q: %v", c.src, err)
				}
			}
		default:
			t.Errorf("%q: this test does not know how to check what it does; add a check", c.src)
		}
	}
	for _, want := range []string{"chain", "/backhand/drain", "/backhand/undrain", "tags", "/load"} {
		if !seen[want] {
			t.Errorf("README.md has no admin-API curl example for %s", want)
		}
	}
	// No command made the node exit.
	select {
	case <-n.done:
		t.Fatal("caddy exited")
	default:
	}
}
