package backhand

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-backhand/backhand/internal/logtext"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// maxAppReport is the most of a report that is read, in bytes.
const maxAppReport = 4 << 10

// defaultAppReportTimeout bounds one read of an app_report URL.
const defaultAppReportTimeout = 250 * time.Millisecond

// AppReportSource says where the local application reports its own figures,
// read once per interval; it is the analogue of HAProxy's agent-check.
// Exactly one of File or URL must be set.
//
// A report is text of at most 4 KiB: tokens separated by whitespace, commas
// or line breaks, case-insensitive. A `#` starts a comment that runs to the
// end of its line, so HAProxy's `down#reason` reads as `down`. The tokens are:
//
//   - `load=<number>`: the application's own load, a decimal number >= 0,
//     e.g. `load=0.75`. It is announced x1000 (0.75 as 750); values beyond
//     4294967.295 are announced as that.
//   - `weight=<0-1000>`: the weight the node asks for, an integer where 1000
//     is full weight and 0 asks for no requests.
//   - `<0-100>%` or `weight=<0-100>%`: the weight as an integer percentage,
//     HAProxy's form; `75%` is `weight=750`.
//   - `drain`: the node wants no new requests. HAProxy's `down`, `maint`,
//     `stopped` and `fail` mean the same.
//   - `ready`, `up`: accepted for HAProxy compatibility; they change nothing
//     (in particular they do not undo a drain).
//
// When a token repeats, the last one wins. A report omitting load or weight
// announces no application load or weight. Any other token (HAProxy's
// `maxconn:` included), or a report with no token at all, is an error, so
// that typos show up in the logs. Examples: `load=0.4 weight=800`,
// `75% drain`.
type AppReportSource struct {
	// File is the path of a small text file holding the report, read each
	// interval. It must be a regular file.
	File string `json:"file,omitempty"`

	// URL is an http:// URL on a loopback address (127.0.0.0/8, [::1] or
	// localhost) whose response body is the report, fetched with GET each
	// interval. Any status other than 2xx is an error; redirects are not
	// followed.
	URL string `json:"url,omitempty"`

	// Timeout bounds one read of URL. Default: 250ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// Validate checks that exactly one of File and URL is set, that URL is an
// http:// URL on a loopback address, and that Timeout is not negative.
func (s *AppReportSource) Validate() error {
	switch {
	case s.File == "" && s.URL == "":
		return errors.New("app_report: one of file or url is required")
	case s.File != "" && s.URL != "":
		return fmt.Errorf("app_report: file %q and url %q are mutually exclusive", s.File, s.URL)
	case s.Timeout < 0:
		return fmt.Errorf("app_report: timeout %s is negative", time.Duration(s.Timeout))
	case s.URL != "":
		return validateAppReportURL(s.URL)
	}
	return nil
}

// validateAppReportURL checks that raw is an http:// URL on a loopback
// address: the report is the local application's, and a remote one would let
// another machine steer this node.
func validateAppReportURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("app_report: url %q: %v", raw, err)
	}
	if u.Scheme != "http" {
		return fmt.Errorf("app_report: url %q must start with http://", raw)
	}
	if !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("app_report: url %q is not on a loopback address", raw)
	}
	return nil
}

// isLoopbackHost reports whether host is localhost or a loopback IP address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// appReport is one parsed report of the local application.
type appReport struct {
	// Weight is 0-1000, when HasWeight.
	Weight    uint16
	HasWeight bool
	// Load1000 is the reported load x1000, when HasLoad.
	Load1000 uint32
	HasLoad  bool
	// Drain asks for no new requests.
	Drain bool
}

// apply copies the report into f. The weight and load replace f's, absent
// ones included; Drain sets f.Draining but never clears it, since the node
// may be draining for other reasons.
func (r appReport) apply(f *Figures) {
	f.AppWeight, f.HasAppWeight = r.Weight, r.HasWeight
	f.AppLoad1000, f.HasAppLoad = r.Load1000, r.HasLoad
	if r.Drain {
		f.Draining = true
	}
}

// parseAppReport parses a report in the format documented on
// AppReportSource.
func parseAppReport(b []byte) (appReport, error) {
	var r appReport
	tokens := 0
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) // UTF-8 byte order mark
	for line := range bytes.Lines(b) {
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, tok := range strings.FieldsFunc(string(line), isAppReportSep) {
			if err := r.parseToken(strings.ToLower(tok)); err != nil {
				return appReport{}, err
			}
			tokens++
		}
	}
	if tokens == 0 {
		return appReport{}, errors.New("app_report: empty report")
	}
	return r, nil
}

// isAppReportSep reports whether c separates tokens.
func isAppReportSep(c rune) bool {
	return c == ',' || unicode.IsSpace(c)
}

// parseToken applies one lower-cased token to r.
func (r *appReport) parseToken(tok string) error {
	switch tok {
	case "drain", "down", "maint", "stopped", "fail":
		r.Drain = true
		return nil
	case "ready", "up":
		return nil
	}
	if v, ok := strings.CutPrefix(tok, "load="); ok {
		return r.parseLoad(tok, v)
	}
	v, isWeight := strings.CutPrefix(tok, "weight=")
	if p, ok := strings.CutSuffix(v, "%"); ok {
		return r.parseWeight(tok, p, 100, 10)
	}
	if isWeight {
		return r.parseWeight(tok, v, 1000, 1)
	}
	return fmt.Errorf("app_report: unknown token %q", logtext.Clip(tok, 64))
}

// parseLoad sets the load from v, a number >= 0.
func (r *appReport) parseLoad(tok, v string) error {
	x, err := strconv.ParseFloat(v, 64)
	if (err != nil && !errors.Is(err, strconv.ErrRange)) || math.IsNaN(x) || x < 0 {
		return fmt.Errorf("app_report: %q: load must be a number >= 0", logtext.Clip(tok, 64))
	}
	r.Load1000, r.HasLoad = wire.Milli32(x), true
	return nil
}

// parseWeight sets the weight from v, an integer 0-limit, scaled by scale.
func (r *appReport) parseWeight(tok, v string, limit, scale uint64) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n > limit {
		return fmt.Errorf("app_report: %q: weight must be an integer from 0 to %d", logtext.Clip(tok, 64), limit)
	}
	r.Weight, r.HasWeight = uint16(n*scale), true
	return nil
}

// appReporter reads the local application's report from an AppReportSource.
type appReporter struct {
	src     AppReportSource
	timeout time.Duration
	client  *http.Client
}

// newAppReporter returns a reporter for src, which should have been
// validated.
func newAppReporter(src AppReportSource) *appReporter {
	a := &appReporter{src: src, timeout: time.Duration(src.Timeout)}
	if a.timeout <= 0 {
		a.timeout = defaultAppReportTimeout
	}
	if src.URL != "" {
		a.client = newLoopbackClient()
	}
	return a
}

// newLoopbackClient returns an HTTP client that only connects to loopback
// addresses (checked after name resolution, so a "localhost" that resolves
// elsewhere is refused), uses no proxy and follows no redirects.
func newLoopbackClient() *http.Client {
	dialer := &net.Dialer{Control: loopbackOnly}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// loopbackOnly refuses connections to addresses that are not loopback.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("app_report: refusing to connect to non-loopback address %s", address)
	}
	return nil
}

// read reads and parses one report.
func (a *appReporter) read(ctx context.Context) (appReport, error) {
	var b []byte
	var err error
	switch {
	case a.src.File != "":
		b, err = readAppReportFile(a.src.File)
	case a.src.URL != "":
		b, err = a.get(ctx)
	default:
		err = errors.New("app_report: neither file nor url is set")
	}
	if err != nil {
		return appReport{}, err
	}
	return parseAppReport(b)
}

// close releases the reporter's idle connection, if any.
func (a *appReporter) close() {
	if a.client != nil {
		a.client.CloseIdleConnections()
	}
}

// readAppReportFile reads the report file. Anything but a regular file is
// refused, since reading a FIFO or a device could block or never end.
func readAppReportFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("app_report: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("app_report: file %q is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("app_report: %w", err)
	}
	defer f.Close()
	return readAppReportBody(f, path)
}

// get fetches the report from the URL within the timeout.
func (a *appReporter) get(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.src.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("app_report: url %q: %w", a.src.URL, err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("app_report: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("app_report: GET %s: status %s", a.src.URL, resp.Status)
	}
	return readAppReportBody(resp.Body, a.src.URL)
}

// readAppReportBody reads at most maxAppReport bytes from r; a longer report
// is an error rather than silently cut.
func readAppReportBody(r io.Reader, from string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxAppReport+1))
	if err != nil {
		return nil, fmt.Errorf("app_report: reading %s: %w", from, err)
	}
	if len(b) > maxAppReport {
		return nil, fmt.Errorf("app_report: %s: report is larger than %d bytes", from, maxAppReport)
	}
	return b, nil
}
