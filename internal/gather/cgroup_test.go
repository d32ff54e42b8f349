package gather

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
)

func fixtureCgroup(name string) cgroupFS {
	return cgroupFS{fsys: os.DirFS(filepath.Join("testdata", "cgroup", name))}
}

func TestCgroupParseCPUMax(t *testing.T) {
	tests := []struct {
		in              string
		quota, period   uint64
		limited, hasErr bool
	}{
		{in: "200000 100000\n", quota: 200000, period: 100000, limited: true},
		{in: "50000 100000", quota: 50000, period: 100000, limited: true},
		{in: "max 100000\n", period: 100000},
		{in: "max", period: 100000},
		{in: "150000", quota: 150000, period: 100000, limited: true},
		{in: "", hasErr: true},
		{in: "\n", hasErr: true},
		{in: "lots of cpu", hasErr: true},
		{in: "0 100000", hasErr: true},
		{in: "200000 0", hasErr: true},
		{in: "-1 100000", hasErr: true},
		{in: "200000 abc", hasErr: true},
		{in: "99999999999999999999999 100000", hasErr: true},
	}
	for _, tt := range tests {
		q, p, l, err := parseCPUMax([]byte(tt.in))
		if (err != nil) != tt.hasErr {
			t.Errorf("parseCPUMax(%q) error = %v, want error %v", tt.in, err, tt.hasErr)
			continue
		}
		if err == nil && (q != tt.quota || p != tt.period || l != tt.limited) {
			t.Errorf("parseCPUMax(%q) = %d, %d, %v; want %d, %d, %v", tt.in, q, p, l, tt.quota, tt.period, tt.limited)
		}
	}
}

func TestCgroupParseMemoryMax(t *testing.T) {
	tests := []struct {
		in      string
		limit   uint64
		limited bool
		hasErr  bool
	}{
		{in: "1073741824\n", limit: 1 << 30, limited: true},
		{in: "max\n"},
		{in: "max"},
		{in: "-5", hasErr: true},
		{in: "", hasErr: true},
		{in: "1G", hasErr: true},
	}
	for _, tt := range tests {
		l, ok, err := parseMemoryMax([]byte(tt.in))
		if (err != nil) != tt.hasErr {
			t.Errorf("parseMemoryMax(%q) error = %v, want error %v", tt.in, err, tt.hasErr)
			continue
		}
		if err == nil && (l != tt.limit || ok != tt.limited) {
			t.Errorf("parseMemoryMax(%q) = %d, %v; want %d, %v", tt.in, l, ok, tt.limit, tt.limited)
		}
	}
}

func TestCgroupParseKeyedUint(t *testing.T) {
	stat := []byte("usage_usec 42\nuser_usec 40\nsystem_usec 2\n")
	if n, err := parseKeyedUint(stat, "cpu.stat", "usage_usec"); err != nil || n != 42 {
		t.Errorf("usage_usec = %d, %v; want 42", n, err)
	}
	if n, err := parseKeyedUint(stat, "cpu.stat", "system_usec"); err != nil || n != 2 {
		t.Errorf("system_usec = %d, %v; want 2", n, err)
	}
	for _, bad := range []string{"", "usage_usec\n", "usage_usec x\n", "usage_usec -1\n", "user_usec 5\n"} {
		if _, err := parseKeyedUint([]byte(bad), "cpu.stat", "usage_usec"); err == nil {
			t.Errorf("parseKeyedUint(%q) succeeded, want error", bad)
		}
	}
}

func TestCgroupParseProcSelfCgroup(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{in: "0::/\n", want: "/", ok: true},
		{in: "0::/system.slice/caddy.service\n", want: "/system.slice/caddy.service", ok: true},
		{in: "4:memory:/x\n1:cpu:/\n0::/kubepods/pod1/c2\n", want: "/kubepods/pod1/c2", ok: true},
		{in: "4:memory:/x\n1:cpu:/\n"},
		{in: ""},
		{in: "0::"},
	}
	for _, tt := range tests {
		got, ok := parseProcSelfCgroup([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseProcSelfCgroup(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestCgroupDirFor(t *testing.T) {
	mount := t.TempDir()
	sub := filepath.Join(mount, "system.slice", "caddy.service")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := map[string]string{
		"/":                           mount,
		"/system.slice/caddy.service": sub,
		"/docker/abc":                 mount, // no cgroup namespace: fall back
		"/../../etc":                  mount, // cannot climb above the mount
	}
	for p, want := range tests {
		if got := cgroupDirFor(mount, p); got != want {
			t.Errorf("cgroupDirFor(%q) = %q, want %q", p, got, want)
		}
	}
}

func TestCgroupDetectDoesNotPanic(t *testing.T) {
	if dir := detectCgroupDir(); dir == "" {
		t.Error("detectCgroupDir() = \"\"")
	}
}

func TestCgroupFSLimited(t *testing.T) {
	c := fixtureCgroup("limited")
	q, p, ok, err := c.cpuLimit()
	if err != nil || !ok || q != 200000 || p != 100000 {
		t.Errorf("cpuLimit() = %d, %d, %v, %v", q, p, ok, err)
	}
	if u, err := c.cpuUsageUsec(); err != nil || u != 123456789 {
		t.Errorf("cpuUsageUsec() = %d, %v", u, err)
	}
	if l, ok, err := c.memLimit(); err != nil || !ok || l != 1<<30 {
		t.Errorf("memLimit() = %d, %v, %v", l, ok, err)
	}
	if ws, err := c.memWorkingSet(); err != nil || ws != 512<<20-128<<20 {
		t.Errorf("memWorkingSet() = %d, %v; want %d", ws, err, 512<<20-128<<20)
	}
}

func TestCgroupFSUnlimited(t *testing.T) {
	for _, name := range []string{"unlimited", "root"} {
		c := fixtureCgroup(name)
		if _, _, ok, err := c.cpuLimit(); err != nil || ok {
			t.Errorf("%s: cpuLimit() limited %v, error %v; want no limit", name, ok, err)
		}
		if _, ok, err := c.memLimit(); err != nil || ok {
			t.Errorf("%s: memLimit() limited %v, error %v; want no limit", name, ok, err)
		}
	}
}

func TestCgroupFSMalformed(t *testing.T) {
	c := fixtureCgroup("malformed")
	if _, _, _, err := c.cpuLimit(); err == nil {
		t.Error("cpuLimit() succeeded on malformed cpu.max")
	}
	if _, err := c.cpuUsageUsec(); err == nil {
		t.Error("cpuUsageUsec() succeeded on malformed cpu.stat")
	}
	if _, _, err := c.memLimit(); err == nil {
		t.Error("memLimit() succeeded on malformed memory.max")
	}
	if _, err := c.memWorkingSet(); err == nil {
		t.Error("memWorkingSet() succeeded on malformed memory.current")
	}
	c = fixtureCgroup("badstat")
	if _, err := c.cpuUsageUsec(); err == nil {
		t.Error("cpuUsageUsec() succeeded without usage_usec")
	}
	if _, err := c.memWorkingSet(); err == nil {
		t.Error("memWorkingSet() succeeded on malformed inactive_file")
	}
}

func TestCgroupFSMissingUsage(t *testing.T) {
	c := fixtureCgroup("root")
	if _, err := c.cpuUsageUsec(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cpuUsageUsec() error = %v, want not exist", err)
	}
	if _, err := c.memWorkingSet(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("memWorkingSet() error = %v, want not exist", err)
	}
	var none cgroupFS
	if _, _, ok, err := none.cpuLimit(); err != nil || ok {
		t.Errorf("zero cgroupFS cpuLimit() = %v, %v", ok, err)
	}
}

func TestCgroupWorkingSetBelowZero(t *testing.T) {
	c := cgroupFS{fsys: fstest.MapFS{
		"memory.current": {Data: []byte("100\n")},
		"memory.stat":    {Data: []byte("inactive_file 200\n")},
	}}
	if ws, err := c.memWorkingSet(); err != nil || ws != 0 {
		t.Errorf("memWorkingSet() = %d, %v; want 0", ws, err)
	}
}

func TestCgroupReadBounded(t *testing.T) {
	big := make([]byte, 2*maxCgroupFile)
	c := cgroupFS{fsys: fstest.MapFS{"cpu.max": {Data: big}}}
	if _, _, _, err := c.cpuLimit(); err == nil {
		t.Error("cpuLimit() succeeded on a huge cpu.max")
	}
}
